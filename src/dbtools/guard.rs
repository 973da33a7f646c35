//! Read-only by parsing, for engines whose read-only transactions are missing or do nothing
//! (TiDB, Doris, StarRocks): the statement is parsed with a real SQL parser (the MySQL
//! dialect of `sqlparser`), refused unless it is exactly one read, and what runs is the
//! parser's own rendering of it, not the text that came in. Running the rendering closes the
//! gap between two parsers' readings of the same text (a comment one of them does not see as
//! a comment, an executable `/*! … */` comment): what the database receives is what was
//! checked.

use std::ops::ControlFlow;

use sqlparser::ast::{Query, Select, SetExpr, Statement, Visit, Visitor};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

/// One read statement, rendered for the database; or why not.
pub fn single_read(sql: &str) -> Result<String, String> {
    let statement = one_statement(sql)?;
    check_read(&statement)?;
    render(&statement)
}

/// `EXPLAIN` of one read statement, rendered.
pub fn explain_read(sql: &str) -> Result<String, String> {
    let read = single_read(sql)?;
    Ok(format!("EXPLAIN {read}"))
}

/// One statement of any kind (a writable upstream), rendered: still one per call.
pub fn single_statement(sql: &str) -> Result<String, String> {
    render(&one_statement(sql)?)
}

fn one_statement(sql: &str) -> Result<Statement, String> {
    let mut statements = Parser::parse_sql(&MySqlDialect {}, sql)
        .map_err(|e| format!("the statement could not be read: {e}"))?;
    match statements.len() {
        1 => Ok(statements.remove(0)),
        0 => Err("there is no statement".into()),
        n => Err(format!("one statement at a time: this is {n} statements")),
    }
}

/// The parser's rendering, when it reads back as the same single statement. Backslashes are
/// refused outright: the parser reads `\'` inside a string as an escaped quote but renders
/// the string without escaping the backslash again, and a server in `NO_BACKSLASH_ESCAPES`
/// mode reads them differently still — either way the server would see another statement
/// than the one checked.
fn render(statement: &Statement) -> Result<String, String> {
    let text = statement.to_string();
    if text.contains('\\') {
        return Err(
            "backslashes are not run here: the gateway's parser and the server may read them differently"
                .into(),
        );
    }
    let again = Parser::parse_sql(&MySqlDialect {}, &text)
        .map_err(|_| "the statement does not read back the same, so it is not run".to_string())?;
    if again.as_slice() != std::slice::from_ref(statement) {
        return Err("the statement does not read back the same, so it is not run".into());
    }
    Ok(text)
}

fn check_read(statement: &Statement) -> Result<(), String> {
    let top_level_ok = match statement {
        Statement::Query(_)
        | Statement::ExplainTable { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowCollation { .. }
        | Statement::ShowFunctions { .. } => true,
        // A plan, never a run: ANALYZE executes the statement.
        Statement::Explain {
            analyze, statement, ..
        } => !analyze && matches!(**statement, Statement::Query(_)),
        _ => false,
    };
    if !top_level_ok {
        return Err(not_a_read());
    }
    let mut walk = ReadOnlyWalk { depth: 0 };
    match statement.visit(&mut walk) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(why) => Err(why),
    }
}

fn not_a_read() -> String {
    "this upstream is read-only: only one SELECT, SHOW, DESCRIBE or EXPLAIN statement is run".into()
}

/// Everything nested must be a query too: no data-changing common table expression, no
/// `SELECT … INTO` (variables, files), no row locks.
struct ReadOnlyWalk {
    depth: usize,
}

impl Visitor for ReadOnlyWalk {
    type Break = String;

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<String> {
        self.depth += 1;
        if self.depth > 1 && !matches!(statement, Statement::Query(_)) {
            return ControlFlow::Break(not_a_read());
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, _statement: &Statement) -> ControlFlow<String> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<String> {
        if !query.locks.is_empty() {
            return ControlFlow::Break("row locks (FOR UPDATE, FOR SHARE) are not reads".into());
        }
        if writes(&query.body) {
            return ControlFlow::Break(not_a_read());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<String> {
        // Hints are kept verbatim by the parser, and set what the server enforces
        // (`SET_VAR(query_timeout=…)`, `MAX_EXECUTION_TIME`).
        if !select.optimizer_hints.is_empty() {
            return ControlFlow::Break("optimizer hints are not run here".into());
        }
        if select.into.is_some() {
            return ControlFlow::Break("SELECT … INTO writes: it is not run here".into());
        }
        ControlFlow::Continue(())
    }
}

fn writes(body: &SetExpr) -> bool {
    match body {
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => true,
        SetExpr::SetOperation { left, right, .. } => writes(left) || writes(right),
        SetExpr::Query(q) => writes(&q.body),
        SetExpr::Select(_) | SetExpr::Values(_) | SetExpr::Table(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_read_is_run_as_the_parser_renders_it() {
        assert_eq!(single_read("select 1").unwrap(), "SELECT 1");
        assert!(single_read("SELECT a FROM t WHERE b = 'x;y' -- c").is_ok());
        assert!(single_read("WITH x AS (SELECT 1) SELECT * FROM x").is_ok());
        assert!(single_read("SHOW TABLES").is_ok());
        assert!(single_read("DESCRIBE t").is_ok());
        assert!(single_read("EXPLAIN SELECT * FROM t").is_ok());
        // The comment is dropped: MySQL would read `--x` as minus minus x, and then a
        // second statement; what runs is the rendering, which has no second statement.
        let r = single_read("SELECT 1 --x; DELETE FROM t").unwrap_or_default();
        assert!(!r.contains("DELETE"), "{r}");
    }

    #[test]
    fn anything_but_one_read_is_refused() {
        for sql in [
            "SELECT 1; DROP TABLE t",
            "SELECT 1; SELECT 2",
            "DROP TABLE t",
            "DELETE FROM t",
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "CREATE TABLE u (a INT)",
            "SET GLOBAL x = 1",
            "GRANT ALL ON *.* TO x",
            "SELECT * FROM t FOR UPDATE",
            "SELECT a INTO @v FROM t",
            "SELECT a FROM t INTO OUTFILE '/tmp/x'",
            "EXPLAIN ANALYZE SELECT 1",
            "EXPLAIN DELETE FROM t",
            "CALL p()",
            "",
            "   ;  ",
            "SELECT 1 /*! ; DROP TABLE t */",
        ] {
            match single_read(sql) {
                Err(_) => {}
                Ok(r) => assert!(
                    !r.to_uppercase().contains("DROP") && r.to_uppercase().starts_with("SELECT 1"),
                    "{sql:?} became {r:?}"
                ),
            }
        }
        assert!(single_read("SELECT 1; DROP TABLE t").is_err());
        // A backslash the parser reads as an escape but renders bare: refused.
        assert!(single_read(r"SELECT '\\', '; DROP TABLE t; -- '").is_err());
        // An escaped quote is rendered as a doubled one, which every mode reads alike.
        assert_eq!(single_read(r"SELECT 'a\'b'").unwrap(), "SELECT 'a''b'");
        assert!(single_read("SELECT /*+ SET_VAR(query_timeout=86400) */ 1").is_err());
        assert!(single_statement("DELETE FROM t").is_ok());
        assert!(single_statement("DELETE FROM t; DELETE FROM u").is_err());
        assert!(single_read("DELETE FROM t").is_err());
    }
}
