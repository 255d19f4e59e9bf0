//! Read-then-write patterns in one request's statements: a read of a table followed by a
//! write of it that nothing protects. Without parameters, or without a change stream, these
//! are *risks* (an endpoint that can race), never findings: nothing says a race happened.
//! With both, the same pairs are decided as findings elsewhere.

use crate::statement::{Operation, Protection, Statement};

/// The kind of unprotected read-then-write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RiskKind {
    /// A read, then an update of the table that neither locks nor compares what it read: a
    /// lost update when another request writes in between.
    LostUpdate,
    /// A read (typically "is it there?"), then an insert into the table with no conflict
    /// handling: a duplicate when another request inserts in between.
    CheckThenInsert,
    /// A read, then a delete of the table's rows by the same key, unguarded.
    CheckThenDelete,
}

impl RiskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RiskKind::LostUpdate => "lost_update",
            RiskKind::CheckThenInsert => "check_then_insert",
            RiskKind::CheckThenDelete => "check_then_delete",
        }
    }
}

/// One unprotected pair: the indexes of the read and the write in the request's statements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Risk {
    pub kind: RiskKind,
    pub read: usize,
    pub write: usize,
}

/// The unprotected read-then-write pairs among one request's statements, in execution order:
/// each write paired with the latest earlier read of its table. A read under `FOR UPDATE` or
/// `FOR SHARE`, a compare-and-swap, a guarded relative update, `ON CONFLICT` and `INSERT ...
/// WHERE NOT EXISTS` protect the pair.
pub fn read_then_write(statements: &[&Statement], default_schema: &str) -> Vec<Risk> {
    let mut risks = Vec::new();
    for (w, write) in statements.iter().enumerate() {
        // A serializable transaction before it: the database refuses the anomaly.
        if statements[..w]
            .iter()
            .any(|s| s.operation == Operation::Serializable)
        {
            break;
        }
        let kind = match write.operation {
            Operation::Update => RiskKind::LostUpdate,
            Operation::Insert => RiskKind::CheckThenInsert,
            Operation::Delete => RiskKind::CheckThenDelete,
            Operation::Select | Operation::Serializable => continue,
        };
        if write.protection != Protection::None {
            continue;
        }
        let table = write.table.qualified(default_schema);
        let read = statements[..w].iter().rposition(|r| {
            r.operation == Operation::Select && r.table.qualified(default_schema) == table
        });
        if let Some(r) = read {
            if matches!(
                statements[r].protection,
                Protection::ForUpdate | Protection::ForShare
            ) {
                continue;
            }
            risks.push(Risk {
                kind,
                read: r,
                write: w,
            });
        }
    }
    risks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::interpret;

    fn risks(sqls: &[&str]) -> Vec<(RiskKind, usize, usize)> {
        let parsed: Vec<Statement> = sqls.iter().map(|s| interpret(s).unwrap()).collect();
        let refs: Vec<&Statement> = parsed.iter().collect();
        read_then_write(&refs, "public")
            .into_iter()
            .map(|r| (r.kind, r.read, r.write))
            .collect()
    }

    #[test]
    fn buggy_endpoints() {
        // Buy: read stock, then write it.
        assert_eq!(
            risks(&[
                "SELECT stock FROM items WHERE id = %s",
                "UPDATE items SET stock = %s WHERE id = %s",
            ]),
            [(RiskKind::LostUpdate, 0, 1)]
        );
        // Sign up: check the e-mail is free, then insert.
        assert_eq!(
            risks(&[
                "SELECT 1 FROM users WHERE email = %s",
                "INSERT INTO users (email) VALUES (%s)",
            ]),
            [(RiskKind::CheckThenInsert, 0, 1)]
        );
        // Allocate past what is in stock: checked, then an atomic decrement without a guard.
        assert_eq!(
            risks(&[
                "SELECT stock FROM items WHERE id = $1",
                "UPDATE items SET stock = stock - $2 WHERE id = $1",
            ]),
            [(RiskKind::LostUpdate, 0, 1)]
        );
        // Transfer: both rows read, then both written; each write pairs with the latest read.
        assert_eq!(
            risks(&[
                "SELECT balance FROM accounts WHERE id = $1",
                "SELECT balance FROM accounts WHERE id = $2",
                "UPDATE accounts SET balance = $3 WHERE id = $1",
                "UPDATE accounts SET balance = $4 WHERE id = $2",
            ]),
            [(RiskKind::LostUpdate, 1, 2), (RiskKind::LostUpdate, 1, 3)]
        );
    }

    #[test]
    fn correct_endpoints() {
        for sqls in [
            &[
                "SELECT stock FROM items WHERE id = %s FOR UPDATE",
                "UPDATE items SET stock = %s WHERE id = %s",
            ][..],
            &[
                "SELECT stock, version FROM items WHERE id = %s",
                "UPDATE items SET stock = %s, version = version + 1 WHERE id = %s AND version = %s",
            ],
            &[
                "SELECT stock FROM items WHERE id = $1",
                "UPDATE items SET stock = stock - $2 WHERE id = $1 AND stock >= $2",
            ],
            &[
                "SELECT 1 FROM users WHERE email = %s",
                "INSERT INTO users (email) VALUES (%s) ON CONFLICT (email) DO NOTHING",
            ],
            // A write with no read of its table before it: nothing was checked.
            &["UPDATE items SET stock = 0 WHERE id = 1"],
            // Serializable: the database refuses the anomaly (40001), the client retries.
            &[
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                "SELECT balance FROM accounts WHERE id = %s",
                "UPDATE accounts SET balance = %s WHERE id = %s",
            ],
            // A read of another table.
            &[
                "SELECT 1 FROM vouchers WHERE code = %s",
                "INSERT INTO redemptions (code) VALUES (%s)",
            ],
        ] {
            assert_eq!(risks(sqls), [], "{sqls:?}");
        }
    }
}
