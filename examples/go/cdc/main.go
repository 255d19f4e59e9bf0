// Reserve stock in PostgreSQL with a check span around the read and a use span around the
// write, sent to `toctou run` over OTLP/gRPC. The audit records come from PostgreSQL's change
// stream (`toctou run --cdc-postgres`): this program emits none, it only names the request of
// each transaction that writes (NameRequest, the first statement of the transaction).
//
// Two buyers race for the last unit of a SKU: buyer B reserves it between buyer A's check and
// A's write. With a plain write A sells a unit that is no longer there, and toctou reports a
// `stale_check` naming B's committed write, with B's request id; with a write conditioned on
// the checked version, A's write finds no row (`toctou.use.outcome` = `conflict`): a race
// prevented, not a finding.
//
//	toctou run --cdc-postgres "$DATABASE_URL"     # PostgreSQL 14+ with wal_level=logical
//	cd examples/go/cdc && DATABASE_URL=postgres://... go run .
//
// TOCTOU_OTLP_GRPC is toctou's OTLP/gRPC address (default 127.0.0.1:4317). The table
// (TOCTOU_EXAMPLE_TABLE, default `inventory`) is created when missing; the SKU
// (TOCTOU_EXAMPLE_SKU) is a new one for each run unless given.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// NameRequest names the request of tx in PostgreSQL's change stream (toctou.request_id).
func NameRequest(ctx context.Context, tx pgx.Tx, requestID string) error {
	_, err := tx.Exec(ctx, "SELECT pg_logical_emit_message(true, 'toctou.request_id', $1)", requestID)
	return err
}

type shop struct {
	tracer trace.Tracer
	table  string
}

// sql is text with {table} replaced by the table's name, quoted as an identifier.
func (s *shop) sql(text string) string {
	return strings.ReplaceAll(text, "{table}", pgx.Identifier{s.table}.Sanitize())
}

// restock puts one unit in stock. The version only ever goes up, also when the row is reset.
func (s *shop) restock(ctx context.Context, conn *pgx.Conn, sku string) error {
	_, err := conn.Exec(ctx, s.sql(`INSERT INTO {table} VALUES ($1, 1, 1) ON CONFLICT (sku)
		DO UPDATE SET stock = 1, version = {table}.version + 1`), sku)
	return err
}

func (s *shop) reserve(ctx context.Context, conn *pgx.Conn, requestID, sku string, conditional bool,
	afterCheck func() error) (bool, error) {
	common := []attribute.KeyValue{
		// How toctou names the row's changes: public.<table>/<primary key>.
		attribute.String("toctou.resource", "public."+s.table+"/"+sku),
		attribute.String("toctou.request_id", requestID),
		attribute.String("toctou.operation", "reserve"),
	}

	// Check: end the span as soon as the read returns; its end is the check's event time.
	_, check := s.tracer.Start(ctx, "check stock", trace.WithAttributes(common...),
		trace.WithAttributes(
			attribute.String("toctou.phase", "check"),
			attribute.String("toctou.check.source", "primary"),
		))
	var stock, seen int64
	err := conn.QueryRow(ctx, s.sql("SELECT stock, version FROM {table} WHERE sku = $1"), sku).
		Scan(&stock, &seen)
	if err != nil {
		check.End()
		return false, err
	}
	decision := "allow"
	if stock <= 0 {
		decision = "deny"
	}
	check.SetAttributes(
		attribute.String("toctou.resource.version", strconv.FormatInt(seen, 10)), // a string
		attribute.String("toctou.check.decision", decision),
	)
	check.End()
	if decision == "deny" {
		return false, nil
	}

	if afterCheck != nil { // the window between the decision and the action
		if err := afterCheck(); err != nil {
			return false, err
		}
	}

	// Use: a sibling of the check (started from ctx, not from the check's context) around the
	// whole write transaction, commit included; its start is the use's event time. Its
	// version is the pre-image the write acted on.
	_, use := s.tracer.Start(ctx, "reserve stock", trace.WithAttributes(common...),
		trace.WithAttributes(attribute.String("toctou.phase", "use")))
	defer use.End()
	after, written, err := s.takeOne(ctx, conn, requestID, sku, conditional, seen)
	if err != nil {
		return false, err
	}
	if !written {
		// Our own precondition caught the race: a prevented race, not a finding.
		use.SetAttributes(
			attribute.String("toctou.resource.version", strconv.FormatInt(seen, 10)),
			attribute.String("toctou.use.outcome", "conflict"),
		)
		return false, nil
	}
	use.SetAttributes(
		attribute.String("toctou.resource.version", strconv.FormatInt(after-1, 10)),
		attribute.String("toctou.use.outcome", "ok"),
	)
	return true, nil
}

// takeOne is the write, in a transaction whose first statement names the request. It returns
// the version after the write, or written = false when the conditional write found no row.
func (s *shop) takeOne(ctx context.Context, conn *pgx.Conn, requestID, sku string, conditional bool,
	seen int64) (after int64, written bool, err error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, false, err
	}
	defer tx.Rollback(ctx) // a no-op once committed
	if err := NameRequest(ctx, tx, requestID); err != nil {
		return 0, false, err
	}
	var row pgx.Row
	if conditional {
		row = tx.QueryRow(ctx, s.sql(`UPDATE {table} SET stock = stock - 1, version = version + 1
			WHERE sku = $1 AND version = $2 RETURNING version`), sku, seen)
	} else {
		row = tx.QueryRow(ctx, s.sql(`UPDATE {table} SET stock = stock - 1, version = version + 1
			WHERE sku = $1 RETURNING version`), sku)
	}
	err = row.Scan(&after)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, tx.Commit(ctx)
	}
	if err != nil {
		return 0, false, err
	}
	return after, true, tx.Commit(ctx)
}

// race has buyer B reserve between buyer A's check and A's write. It returns what each sold.
func (s *shop) race(ctx context.Context, connA, connB *pgx.Conn, sku string, round int,
	conditional bool) (soldA, soldB bool, err error) {
	if err := s.restock(ctx, connA, sku); err != nil {
		return false, false, err
	}
	buyerB := func() (err error) {
		soldB, err = s.reserve(ctx, connB, fmt.Sprintf("order-B%d-%s", round, sku), sku, conditional, nil)
		return err
	}
	soldA, err = s.reserve(ctx, connA, fmt.Sprintf("order-A%d-%s", round, sku), sku, conditional, buyerB)
	return soldA, soldB, err
}

func (s *shop) stock(ctx context.Context, conn *pgx.Conn, sku string) (stock int64) {
	if err := conn.QueryRow(ctx, s.sql("SELECT stock FROM {table} WHERE sku = $1"), sku).Scan(&stock); err != nil {
		log.Fatal(err)
	}
	return stock
}

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func main() {
	ctx := context.Background()
	otlpGRPC := env("TOCTOU_OTLP_GRPC", "127.0.0.1:4317")
	databaseURL := env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
	random := make([]byte, 4)
	rand.Read(random)
	sku := env("TOCTOU_EXAMPLE_SKU", "sku-"+hex.EncodeToString(random))

	spanExp, err := otlptracegrpc.New(ctx,
		otlptracegrpc.WithEndpoint(otlpGRPC), otlptracegrpc.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(spanExp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "inventory"))))
	s := &shop{tracer: tp.Tracer("inventory"), table: env("TOCTOU_EXAMPLE_TABLE", "inventory")}

	connA, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		log.Fatal(err)
	}
	defer connA.Close(ctx)
	connB, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		log.Fatal(err)
	}
	defer connB.Close(ctx)
	if _, err := connA.Exec(ctx, s.sql(`CREATE TABLE IF NOT EXISTS {table}
		(sku text PRIMARY KEY, stock int NOT NULL, version bigint NOT NULL)`)); err != nil {
		log.Fatal(err)
	}

	a, b, err := s.race(ctx, connA, connB, sku, 1, false)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("plain write:       A sold %t, B sold %t, stock now %d\n", a, b, s.stock(ctx, connA, sku))
	a, b, err = s.race(ctx, connA, connB, sku, 2, true)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("conditional write: A sold %t, B sold %t, stock now %d\n", a, b, s.stock(ctx, connA, sku))

	// Flush before exit: batched spans still in memory are lost otherwise.
	shutdownCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := tp.Shutdown(shutdownCtx); err != nil {
		log.Fatal("traces: ", err)
	}
	fmt.Printf("toctou should report one stale_check, for order-A1-%s, naming the write of "+
		"order-B1-%s on public.%s/%s; nothing for order-A2-%s (conflict)\n", sku, sku, s.table, sku, sku)
}
