//! One statement's text to what toctou needs of it: the operation, the table, the columns
//! its predicate pins to values (`WHERE a = $1 AND b = 'x'`), the columns it sets, and what
//! protects it from a race between a read and a write.
//!
//! Statements are as drivers and ORMs send them: quoted identifiers
//! (`"partner_stockrecord"."id"`), placeholders of every driver style (`$1` for PostgreSQL's
//! protocol, `?` for JDBC and MySQL, `%s` and `%(name)s` for Python's DB-API), `LIMIT`,
//! `COALESCE(...)` in `SET`, joins. Placeholders become parameter indexes (0-based, in order
//! of appearance for `?` and `%s`); named ones are numbered in order of first appearance.

use sqlparser::ast::{
    self, AssignmentTarget, BinaryOperator, Expr, FromTable, LockType, ObjectName, OnInsert, Query,
    SetExpr, TableFactor, TableObject, TableWithJoins,
};
use sqlparser::dialect::{MySqlDialect, PostgreSqlDialect};
use sqlparser::parser::Parser;
use thiserror::Error;

/// What a statement does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Select,
    Insert,
    Update,
    Delete,
    /// `SET TRANSACTION ISOLATION LEVEL SERIALIZABLE`, `BEGIN` / `START TRANSACTION ISOLATION
    /// LEVEL SERIALIZABLE`: no table; the rest of its transaction is protected (the database
    /// refuses a serialization anomaly with SQLSTATE 40001).
    Serializable,
}

/// A table, as `schema.name` when the statement qualifies it. Unquoted identifiers are
/// folded to lower case (as PostgreSQL does); quoted ones are kept as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl TableName {
    /// `schema.name`, with `default_schema` where the statement named none.
    pub fn qualified(&self, default_schema: &str) -> String {
        format!(
            "{}.{}",
            self.schema.as_deref().unwrap_or(default_schema),
            self.name
        )
    }
}

/// A value in a statement: a parameter (0-based index), a literal, or something computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueRef {
    Param(usize),
    Literal(String),
    /// An expression toctou does not evaluate (`stock - 1`, `now()`, a subquery).
    Computed,
}

/// `column = value` in a predicate's top-level conjunction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub column: String,
    pub value: ValueRef,
}

/// What keeps a read and a write apart, when anything does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protection {
    None,
    /// `SELECT ... FOR UPDATE`: the rows are locked until the transaction ends.
    ForUpdate,
    /// `SELECT ... FOR SHARE`.
    ForShare,
    /// `UPDATE ... WHERE ... AND <column> = <value>`, the column being one the statement
    /// also sets: a compare-and-swap on a version.
    VersionPredicate(String),
    /// `UPDATE ... SET c = c - $1 WHERE ... AND c >= $1`: a relative update with a guard.
    GuardedRelative(String),
    /// `INSERT ... ON CONFLICT` / `ON DUPLICATE KEY UPDATE`.
    OnConflict,
    /// `INSERT ... SELECT ... WHERE NOT EXISTS (...)`.
    InsertWhereNotExists,
}

/// What toctou reads of one statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub operation: Operation,
    pub table: TableName,
    /// Columns the predicate pins to one value each (top-level `AND`s of `=`).
    pub conditions: Vec<Condition>,
    /// Columns an `UPDATE` sets, or an `INSERT` gives values for, with those values.
    pub writes: Vec<Condition>,
    pub protection: Protection,
    /// How many parameters the statement takes.
    pub params: usize,
    /// The names of its named placeholders (`%(name)s`) in order of first appearance, the
    /// parameter indexes they have here; empty for positional ones.
    pub names: Vec<String>,
}

/// Why a statement is not read, by reason (a label value of the counts).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum StatementError {
    #[error("not SQL either dialect parses: {0}")]
    Syntax(String),
    #[error("several statements in one span")]
    Several,
    #[error("not a read or a write of one table ({0})")]
    Unsupported(&'static str),
}

impl StatementError {
    pub fn reason(&self) -> &'static str {
        match self {
            StatementError::Syntax(_) => "syntax",
            StatementError::Several => "several_statements",
            StatementError::Unsupported(_) => "unsupported",
        }
    }
}

/// Reads one statement's text.
pub fn interpret(sql: &str) -> Result<Statement, StatementError> {
    let (text, names, count) = placeholders(sql);
    let parsed = Parser::parse_sql(&PostgreSqlDialect {}, &text)
        .or_else(|pg| Parser::parse_sql(&MySqlDialect {}, &text).map_err(|_| pg))
        .map_err(|e| StatementError::Syntax(e.to_string()))?;
    let [statement] = parsed.as_slice() else {
        return Err(StatementError::Several);
    };
    let mut reader = Reader {
        positional: 0,
        numbered: 0,
        table: None,
    };
    let mut s = reader.statement(statement)?;
    s.params = count.max(reader.positional).max(reader.numbered);
    s.names = names;
    Ok(s)
}

/// Rewrites DB-API placeholders (`%s`, `%(name)s`) as `$n`, which both dialects parse, and
/// returns the names of the named ones in order of first appearance and how many distinct
/// ones there were. `%%` is a literal `%`. Quoted text is left alone.
fn placeholders(sql: &str) -> (String, Vec<String>, usize) {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut names: Vec<&str> = Vec::new();
    let mut positional = 0;
    let mut quote: Option<char> = None;
    let mut rest = sql;
    while let Some(c) = rest.chars().next() {
        let len = c.len_utf8();
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`') => quote = Some(c),
            (None, '%') if rest.starts_with("%%") => {
                out.push('%');
                rest = &rest[2..];
                continue;
            }
            (None, '%') if rest.starts_with("%s") => {
                positional += 1;
                out.push_str(&format!("${positional}"));
                rest = &rest[2..];
                continue;
            }
            (None, '%') if rest.starts_with("%(") => {
                if let Some(end) = rest.find(")s") {
                    let name = &rest[2..end];
                    let index = match names.iter().position(|n| *n == name) {
                        Some(i) => i,
                        None => {
                            names.push(name);
                            names.len() - 1
                        }
                    };
                    out.push_str(&format!("${}", index + 1));
                    rest = &rest[end + 2..];
                    continue;
                }
            }
            _ => {}
        }
        out.push(c);
        rest = &rest[len..];
    }
    let count = positional.max(names.len());
    (out, names.into_iter().map(str::to_string).collect(), count)
}

/// Whether transaction modes make it serializable.
fn serializable(modes: &[ast::TransactionMode]) -> bool {
    modes.iter().any(|m| {
        matches!(
            m,
            ast::TransactionMode::IsolationLevel(ast::TransactionIsolationLevel::Serializable)
        )
    })
}

struct Reader {
    /// `?` placeholders seen so far, which number themselves in order.
    positional: usize,
    /// The highest `$n` seen.
    numbered: usize,
    /// The statement's table and its alias: a column qualified with another name is another
    /// table's (a join's), and pins none of this table's rows.
    table: Option<(String, Option<String>)>,
}

impl Reader {
    fn statement(&mut self, s: &ast::Statement) -> Result<Statement, StatementError> {
        match s {
            ast::Statement::Query(q) => self.select(q),
            ast::Statement::Update(u) => {
                let table = single_table(&u.table)?;
                self.set_table(&u.table.relation);
                let writes = u
                    .assignments
                    .iter()
                    .filter_map(|a| match &a.target {
                        AssignmentTarget::ColumnName(c) => Some((last_part(c), &a.value)),
                        AssignmentTarget::Tuple(_) => None,
                    })
                    .map(|(column, value)| Condition {
                        column,
                        value: self.value(value),
                    })
                    .collect::<Vec<_>>();
                let mut guards = Vec::new();
                let conditions = match &u.selection {
                    Some(e) => self.conjunction(e, &mut guards),
                    None => Vec::new(),
                };
                let protection = update_protection(&u.assignments, &conditions, &guards);
                Ok(Statement {
                    operation: Operation::Update,
                    table,
                    conditions,
                    writes,
                    protection,
                    params: 0,
                    names: Vec::new(),
                })
            }
            ast::Statement::Delete(d) => {
                let from = match &d.from {
                    FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
                };
                let [table] = from.as_slice() else {
                    return Err(StatementError::Unsupported("a delete from several tables"));
                };
                self.set_table(&table.relation);
                let table = single_table(table)?;
                let mut guards = Vec::new();
                let conditions = match &d.selection {
                    Some(e) => self.conjunction(e, &mut guards),
                    None => Vec::new(),
                };
                Ok(Statement {
                    operation: Operation::Delete,
                    table,
                    conditions,
                    writes: Vec::new(),
                    protection: Protection::None,
                    params: 0,
                    names: Vec::new(),
                })
            }
            ast::Statement::Insert(i) => {
                let TableObject::TableName(name) = &i.table else {
                    return Err(StatementError::Unsupported("an insert into a function"));
                };
                let table = table_name(name);
                let columns: Vec<String> = i.columns.iter().map(last_part).collect();
                let mut writes = Vec::new();
                let mut protection = match &i.on {
                    Some(OnInsert::OnConflict(_) | OnInsert::DuplicateKeyUpdate(_)) => {
                        Protection::OnConflict
                    }
                    _ => Protection::None,
                };
                if let Some(source) = &i.source {
                    match source.body.as_ref() {
                        SetExpr::Values(values) => {
                            // One row is what a request inserts; several are a batch, whose
                            // first row stands for the shape.
                            if let Some(row) = values.rows.first() {
                                for (column, value) in columns.iter().zip(&row.content) {
                                    writes.push(Condition {
                                        column: column.clone(),
                                        value: self.value(value),
                                    });
                                }
                            }
                            for row in values.rows.iter().skip(1) {
                                for v in &row.content {
                                    self.value(v);
                                }
                            }
                        }
                        // `SELECT * FROM UNNEST(...)` (Django's bulk_create): every column
                        // written, its values not one row's.
                        SetExpr::Select(select) if select.projection.len() != columns.len() => {
                            let mut placeholders = Vec::new();
                            scan_placeholders(&select.to_string(), &mut placeholders);
                            for p in placeholders {
                                self.placeholder(&p);
                            }
                            writes.extend(columns.iter().map(|c| Condition {
                                column: c.clone(),
                                value: ValueRef::Computed,
                            }));
                        }
                        SetExpr::Select(select) => {
                            for (column, item) in columns.iter().zip(&select.projection) {
                                let value = match item {
                                    ast::SelectItem::UnnamedExpr(e)
                                    | ast::SelectItem::ExprWithAlias { expr: e, .. } => {
                                        self.value(e)
                                    }
                                    _ => ValueRef::Computed,
                                };
                                writes.push(Condition {
                                    column: column.clone(),
                                    value,
                                });
                            }
                            if select.selection.as_ref().is_some_and(has_not_exists)
                                && protection == Protection::None
                            {
                                protection = Protection::InsertWhereNotExists;
                            }
                        }
                        _ => {}
                    }
                }
                Ok(Statement {
                    operation: Operation::Insert,
                    table,
                    conditions: Vec::new(),
                    writes,
                    protection,
                    params: 0,
                    names: Vec::new(),
                })
            }
            ast::Statement::Set(ast::Set::SetTransaction { modes, .. })
            | ast::Statement::StartTransaction { modes, .. }
                if serializable(modes) =>
            {
                Ok(Statement {
                    operation: Operation::Serializable,
                    table: TableName {
                        schema: None,
                        name: String::new(),
                    },
                    conditions: Vec::new(),
                    writes: Vec::new(),
                    protection: Protection::None,
                    params: 0,
                    names: Vec::new(),
                })
            }
            _ => Err(StatementError::Unsupported(
                "neither SELECT, INSERT, UPDATE nor DELETE",
            )),
        }
    }

    fn select(&mut self, q: &Query) -> Result<Statement, StatementError> {
        let SetExpr::Select(select) = q.body.as_ref() else {
            return Err(StatementError::Unsupported("a set operation"));
        };
        let [from] = select.from.as_slice() else {
            return Err(StatementError::Unsupported(
                "a select from no or several tables",
            ));
        };
        let table = match &from.relation {
            TableFactor::Table { name, .. } => table_name(name),
            _ => return Err(StatementError::Unsupported("a select from a subquery")),
        };
        self.set_table(&from.relation);
        let mut guards = Vec::new();
        let conditions = match &select.selection {
            Some(e) => self.conjunction(e, &mut guards),
            None => Vec::new(),
        };
        // Joins pin rows of other tables; the read is of the first table's rows.
        for join in &from.joins {
            if let ast::JoinOperator::Inner(ast::JoinConstraint::On(e))
            | ast::JoinOperator::Join(ast::JoinConstraint::On(e)) = &join.join_operator
            {
                self.conjunction(e, &mut Vec::new());
            }
        }
        if let Some(ast::LimitClause::LimitOffset { limit: Some(e), .. }) = &q.limit_clause {
            self.value(e);
        }
        let protection = match q.locks.first().map(|l| &l.lock_type) {
            Some(LockType::Update) => Protection::ForUpdate,
            Some(LockType::Share) => Protection::ForShare,
            None => Protection::None,
        };
        Ok(Statement {
            operation: Operation::Select,
            table,
            conditions,
            writes: Vec::new(),
            protection,
            params: 0,
            names: Vec::new(),
        })
    }

    /// The `column = value` terms of a predicate's top-level `AND`s; other comparisons of a
    /// column with a value go to `guards` (`stock >= $1`).
    fn conjunction(
        &mut self,
        e: &Expr,
        guards: &mut Vec<(String, BinaryOperator, ValueRef)>,
    ) -> Vec<Condition> {
        let mut out = Vec::new();
        self.terms(e, &mut out, guards);
        out
    }

    fn terms(
        &mut self,
        e: &Expr,
        out: &mut Vec<Condition>,
        guards: &mut Vec<(String, BinaryOperator, ValueRef)>,
    ) {
        match e {
            Expr::Nested(inner) => self.terms(inner, out, guards),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                self.terms(left, out, guards);
                self.terms(right, out, guards);
            }
            // `col IN (v)`, as ORMs delete an instance: one value pins the column as `=` does.
            Expr::In {
                expr,
                target: ast::InTarget::List(list),
                negated: false,
                ..
            } if list.len() == 1 => match self.own_column(expr) {
                Some(column) => {
                    let value = self.value(&list[0]);
                    out.push(Condition { column, value });
                }
                None => {
                    self.value(expr);
                    self.value(&list[0]);
                }
            },
            Expr::BinaryOp { left, op, right } => {
                let (column, value, op) = match (self.own_column(left), self.own_column(right)) {
                    (Some(c), None) => (c, self.value(right), op.clone()),
                    (None, Some(c)) => (c, self.value(left), flip(op)),
                    _ => {
                        self.value(left);
                        self.value(right);
                        return;
                    }
                };
                if op == BinaryOperator::Eq {
                    out.push(Condition { column, value });
                } else {
                    guards.push((column, op, value));
                }
            }
            other => {
                self.value(other);
            }
        }
    }

    /// The column `e` names when it is one of the statement's table: unqualified, or
    /// qualified with the table's name or alias (not a joined table's).
    fn own_column(&self, e: &Expr) -> Option<String> {
        if let Expr::CompoundIdentifier(parts) = e {
            if let (Some((name, alias)), [.., qualifier, _]) = (&self.table, parts.as_slice()) {
                let q = ident(qualifier);
                if q != *name && alias.as_ref() != Some(&q) {
                    return None;
                }
            }
        }
        column(e)
    }

    /// Notes the statement's table (and alias) for [`Reader::own_column`].
    fn set_table(&mut self, factor: &TableFactor) {
        if let TableFactor::Table { name, alias, .. } = factor {
            self.table = Some((
                table_name(name).name,
                alias.as_ref().map(|a| ident(&a.name)),
            ));
        }
    }

    /// A value, numbering the placeholders inside it as the statement goes.
    fn value(&mut self, e: &Expr) -> ValueRef {
        match e {
            Expr::Nested(inner) => self.value(inner),
            Expr::Value(v) => match &v.value {
                ast::Value::Placeholder(p) => self.placeholder(p),
                ast::Value::Null => ValueRef::Computed,
                other => ValueRef::Literal(literal(other)),
            },
            Expr::UnaryOp { expr, .. } | Expr::Cast { expr, .. } => {
                // `-$1`, `$1::int`: the parameter, as far as which row it names goes.
                match self.value(expr) {
                    ValueRef::Param(i) if matches!(e, Expr::Cast { .. }) => ValueRef::Param(i),
                    _ => ValueRef::Computed,
                }
            }
            other => {
                // Number the placeholders inside anything else, in order, so that later
                // ones keep their indexes (`SET qty = qty - ?` then `WHERE id = ?`).
                let mut placeholders = Vec::new();
                collect_placeholders(other, &mut placeholders);
                for p in placeholders {
                    self.placeholder(&p);
                }
                ValueRef::Computed
            }
        }
    }

    fn placeholder(&mut self, p: &str) -> ValueRef {
        match p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            Some(n) if n >= 1 => {
                self.numbered = self.numbered.max(n);
                ValueRef::Param(n - 1)
            }
            _ if p == "?" => {
                self.positional += 1;
                ValueRef::Param(self.positional - 1)
            }
            _ => ValueRef::Computed,
        }
    }
}

/// The placeholders anywhere inside an expression, in the order they appear in its text.
fn collect_placeholders(e: &Expr, out: &mut Vec<String>) {
    // The expression's own rendering names its placeholders in order; walking every kind of
    // expression the parser has would be a second parser for what a scan of the text says.
    scan_placeholders(&e.to_string(), out);
}

/// The placeholders (`?`, `$n`) of SQL text, in order, outside quotes.
fn scan_placeholders(text: &str, out: &mut Vec<String>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut quote = None;
    while i < bytes.len() {
        let b = bytes[i];
        match (quote, b) {
            (Some(q), b) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(b),
            (None, b'?') => out.push("?".into()),
            (None, b'$') => {
                let end = bytes[i + 1..]
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .map_or(bytes.len(), |p| i + 1 + p);
                if end > i + 1 {
                    out.push(text[i..end].to_string());
                    i = end;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
}

fn has_not_exists(e: &Expr) -> bool {
    match e {
        Expr::Exists { negated: true, .. } => true,
        Expr::UnaryOp {
            op: ast::UnaryOperator::Not,
            expr,
        } => matches!(expr.as_ref(), Expr::Exists { negated: false, .. }),
        Expr::Nested(inner) => has_not_exists(inner),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => has_not_exists(left) || has_not_exists(right),
        _ => false,
    }
}

/// A compare-and-swap (a column set and pinned to a value), or a relative update with a
/// guard on the column it changes.
fn update_protection(
    assignments: &[ast::Assignment],
    conditions: &[Condition],
    guards: &[(String, BinaryOperator, ValueRef)],
) -> Protection {
    for a in assignments {
        let AssignmentTarget::ColumnName(c) = &a.target else {
            continue;
        };
        let set = last_part(c);
        if conditions.iter().any(|k| k.column == set) {
            return Protection::VersionPredicate(set);
        }
        let relative = expression_reads(&a.value, &set);
        if relative && guards.iter().any(|(g, _, _)| *g == set) {
            return Protection::GuardedRelative(set);
        }
    }
    Protection::None
}

/// Whether `e` reads `column` (`qty - 1`, `COALESCE(qty, 0) + $1`).
fn expression_reads(e: &Expr, column_name: &str) -> bool {
    match e {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => {
            column(e).is_some_and(|c| c == column_name)
        }
        Expr::BinaryOp { left, right, .. } => {
            expression_reads(left, column_name) || expression_reads(right, column_name)
        }
        Expr::Nested(inner)
        | Expr::UnaryOp { expr: inner, .. }
        | Expr::Cast { expr: inner, .. } => expression_reads(inner, column_name),
        Expr::Function(f) => f.to_string().to_lowercase().contains(column_name),
        _ => false,
    }
}

fn flip(op: &BinaryOperator) -> BinaryOperator {
    match op {
        BinaryOperator::Gt => BinaryOperator::Lt,
        BinaryOperator::Lt => BinaryOperator::Gt,
        BinaryOperator::GtEq => BinaryOperator::LtEq,
        BinaryOperator::LtEq => BinaryOperator::GtEq,
        other => other.clone(),
    }
}

/// The column an expression names (`qty`, `"t"."qty"`), its last part.
fn column(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(ident(i)),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident),
        Expr::Nested(inner) => column(inner),
        _ => None,
    }
}

fn single_table(t: &TableWithJoins) -> Result<TableName, StatementError> {
    match &t.relation {
        TableFactor::Table { name, .. } => Ok(table_name(name)),
        _ => Err(StatementError::Unsupported("a write to a subquery")),
    }
}

fn table_name(name: &ObjectName) -> TableName {
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident().map(ident))
        .collect();
    match parts.as_slice() {
        [.., schema, table] => TableName {
            schema: Some(schema.clone()),
            name: table.clone(),
        },
        [table] => TableName {
            schema: None,
            name: table.clone(),
        },
        [] => TableName {
            schema: None,
            name: name.to_string(),
        },
    }
}

fn last_part(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(ident)
        .unwrap_or_else(|| name.to_string())
}

/// An identifier as the database resolves it: unquoted folded to lower case.
fn ident(i: &ast::Ident) -> String {
    match i.quote_style {
        Some(_) => i.value.clone(),
        None => i.value.to_lowercase(),
    }
}

fn literal(v: &ast::Value) -> String {
    match v {
        ast::Value::SingleQuotedString(s)
        | ast::Value::DoubleQuotedString(s)
        | ast::Value::EscapedStringLiteral(s)
        | ast::Value::NationalStringLiteral(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(column: &str, value: ValueRef) -> Condition {
        Condition {
            column: column.into(),
            value,
        }
    }

    #[test]
    fn a_django_read_by_a_foreign_key_then_a_full_row_save() {
        // Django's ORM, as psycopg's instrumentation records it.
        let read = interpret(
            r#"SELECT "partner_stockrecord"."id", "partner_stockrecord"."product_id", "partner_stockrecord"."num_in_stock" FROM "partner_stockrecord" WHERE "partner_stockrecord"."product_id" = %s LIMIT 21"#,
        )
        .unwrap();
        assert_eq!(read.operation, Operation::Select);
        assert_eq!(read.table.qualified("public"), "public.partner_stockrecord");
        assert_eq!(read.conditions, [cond("product_id", ValueRef::Param(0))]);
        assert_eq!(read.protection, Protection::None);
        assert_eq!(read.params, 1);
        let save = interpret(
            r#"UPDATE "partner_stockrecord" SET "product_id" = %s, "num_in_stock" = %s, "price" = %s WHERE "partner_stockrecord"."id" = %s"#,
        )
        .unwrap();
        assert_eq!(save.operation, Operation::Update);
        assert_eq!(save.conditions, [cond("id", ValueRef::Param(3))]);
        assert_eq!(
            save.writes,
            [
                cond("product_id", ValueRef::Param(0)),
                cond("num_in_stock", ValueRef::Param(1)),
                cond("price", ValueRef::Param(2)),
            ]
        );
        assert_eq!(save.protection, Protection::None);
    }

    #[test]
    fn what_protects_a_statement() {
        let p = |sql: &str| interpret(sql).unwrap().protection;
        assert_eq!(
            p("SELECT stock FROM inventory WHERE sku = $1 FOR UPDATE"),
            Protection::ForUpdate
        );
        assert_eq!(
            p("SELECT stock FROM inventory WHERE sku = $1 FOR SHARE"),
            Protection::ForShare
        );
        assert_eq!(
            p("UPDATE inventory SET stock = $1, version = version + 1 WHERE sku = $2 AND version = $3"),
            Protection::VersionPredicate("version".into())
        );
        assert_eq!(
            p("UPDATE inventory SET qty = qty - $1 WHERE sku = $2 AND qty >= $1"),
            Protection::GuardedRelative("qty".into())
        );
        assert_eq!(
            p("UPDATE inventory SET qty = COALESCE(qty, 0) - ? WHERE sku = ? AND ? <= qty"),
            Protection::GuardedRelative("qty".into())
        );
        assert_eq!(
            p("UPDATE inventory SET qty = qty - 1 WHERE sku = $1"),
            Protection::None,
            "relative without a guard: the check was elsewhere"
        );
        assert_eq!(
            p("INSERT INTO users (email) VALUES ($1) ON CONFLICT (email) DO NOTHING"),
            Protection::OnConflict
        );
        assert_eq!(
            p("INSERT INTO users (email) VALUES (?) ON DUPLICATE KEY UPDATE email = email"),
            Protection::OnConflict
        );
        assert_eq!(
            p("INSERT INTO users (email) SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM users WHERE email = $1)"),
            Protection::InsertWhereNotExists
        );
    }

    #[test]
    fn placeholders_of_every_driver_style() {
        // JDBC/MySQL `?` number themselves in order, through computed values too.
        let s = interpret("UPDATE accounts SET balance = balance - ? WHERE id = ? AND owner = ?")
            .unwrap();
        assert_eq!(
            s.conditions,
            [
                cond("id", ValueRef::Param(1)),
                cond("owner", ValueRef::Param(2))
            ]
        );
        assert_eq!(s.params, 3);
        // DB-API named parameters, one used twice.
        let s = interpret(
            "SELECT 1 FROM vouchers WHERE code = %(code)s AND used = false AND code <> %(code)s",
        )
        .unwrap();
        assert_eq!(
            s.conditions,
            [
                cond("code", ValueRef::Param(0)),
                cond("used", ValueRef::Literal("false".into()))
            ]
        );
        assert_eq!(s.params, 1);
        // A literal `%` and quoted text are left alone.
        let s = interpret("SELECT id FROM users WHERE email = %s AND name LIKE 'a%%s'").unwrap();
        assert_eq!(s.conditions, [cond("email", ValueRef::Param(0))]);
        // Casts keep the parameter.
        let s = interpret("DELETE FROM sessions WHERE id = $1::uuid").unwrap();
        assert_eq!(s.conditions, [cond("id", ValueRef::Param(0))]);
    }

    #[test]
    fn an_in_list_of_one_and_a_joined_tables_columns() {
        let s = interpret(r#"DELETE FROM "voucher_voucher" WHERE "voucher_voucher"."id" IN (%s)"#)
            .unwrap();
        assert_eq!(s.conditions, [cond("id", ValueRef::Param(0))]);
        let s =
            interpret(r#"DELETE FROM "voucher_voucher" WHERE "voucher_voucher"."id" IN (%s, %s)"#)
                .unwrap();
        assert_eq!(s.conditions, [], "several values pin no one row");
        assert_eq!(s.params, 2);
        let s = interpret(
            r#"SELECT "partner_stockrecord"."id" FROM "partner_stockrecord" INNER JOIN "catalogue_product" ON ("partner_stockrecord"."product_id" = "catalogue_product"."id") WHERE "catalogue_product"."upc" = %s LIMIT 21"#,
        )
        .unwrap();
        assert_eq!(
            s.conditions,
            [],
            "a joined table's column pins none of this table's rows"
        );
        let s = interpret("SELECT s.id FROM stock s JOIN products p ON p.id = s.product_id WHERE s.product_id = $1 AND p.upc = $2").unwrap();
        assert_eq!(s.conditions, [cond("product_id", ValueRef::Param(0))]);
        assert_eq!(s.params, 2);
    }

    #[test]
    fn named_placeholders_keep_their_names() {
        let s = interpret("UPDATE wallets SET balance = balance - %(amount)s WHERE id = %(id)s AND balance >= %(amount)s").unwrap();
        assert_eq!(s.names, ["amount", "id"]);
        assert_eq!(s.conditions, [cond("id", ValueRef::Param(1))]);
        assert_eq!(s.protection, Protection::GuardedRelative("balance".into()));
    }

    #[test]
    fn inserts_and_schemas() {
        let s = interpret(
            r#"INSERT INTO "shop"."Orders" ("id", "Email") VALUES (%s, %s) RETURNING "id""#,
        )
        .unwrap();
        assert_eq!(
            s.table,
            TableName {
                schema: Some("shop".into()),
                name: "Orders".into()
            }
        );
        assert_eq!(
            s.writes,
            [
                cond("id", ValueRef::Param(0)),
                cond("Email", ValueRef::Param(1))
            ]
        );
        let s = interpret(
            "SELECT u.id FROM Users u JOIN orders o ON o.user_id = u.id WHERE u.email = $1",
        )
        .unwrap();
        assert_eq!(s.table.qualified("public"), "public.users");
        assert_eq!(s.conditions, [cond("email", ValueRef::Param(0))]);
    }

    #[test]
    fn what_is_not_read_says_why() {
        assert_eq!(interpret("BEGIN").unwrap_err().reason(), "unsupported");
        assert_eq!(
            interpret("SELECT 1; SELECT 2").unwrap_err().reason(),
            "several_statements"
        );
        assert_eq!(interpret("SELEKT * FROM t").unwrap_err().reason(), "syntax");
        assert_eq!(
            interpret("SELECT * FROM a UNION SELECT * FROM b")
                .unwrap_err()
                .reason(),
            "unsupported"
        );
    }

    #[test]
    fn serializable_transactions() {
        for sql in [
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "set transaction isolation level serializable, read write",
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        ] {
            assert_eq!(
                interpret(sql).unwrap().operation,
                Operation::Serializable,
                "{sql}"
            );
        }
        for sql in [
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
            "BEGIN",
            "SET statement_timeout = 0",
        ] {
            assert!(interpret(sql).is_err(), "{sql}");
        }
    }
}
