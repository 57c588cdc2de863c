//! Statements assembled from parts without numbering placeholders by hand.
//!
//! A service that folds several statements into one (data-modifying CTEs: the business row, its
//! outbox row and the stored response in one round trip while it holds locks) writes each part
//! with its own `$1..$n`; [`Statement`] renumbers every part after the parameters of the parts
//! before it. The binding order is the order of the parts, so adding a column to one part (an
//! outbox column, say) can never shift the placeholders of another.

/// A statement being assembled; see the [module](self) docs.
#[derive(Debug, Clone, Default)]
pub struct Statement {
    sql: String,
    params: usize,
}

impl Statement {
    /// An empty statement.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends SQL that has no placeholders of its own (keywords, CTE names, punctuation).
    pub fn text(mut self, sql: &str) -> Self {
        debug_assert_eq!(highest_placeholder(sql), 0, "text() got placeholders: {sql}");
        self.sql.push_str(sql);
        self
    }

    /// Appends a part whose placeholders `$1..$n` are its own: they become `$(k+1)..$(k+n)` where
    /// `k` is the number of parameters of the parts before it. A part may use one placeholder
    /// several times; it must use `$1..$n` without gaps.
    pub fn part(mut self, sql: &str) -> Self {
        let offset = self.params;
        let mut highest = 0;
        let mut rest = sql;
        while let Some(dollar) = rest.find('$') {
            self.sql.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                self.sql.push('$');
                rest = after;
                continue;
            }
            let number: usize = after[..digits].parse().unwrap_or(0);
            highest = highest.max(number);
            self.sql.push('$');
            self.sql.push_str(&(number + offset).to_string());
            rest = &after[digits..];
        }
        self.sql.push_str(rest);
        self.params += highest;
        self
    }

    /// Number of parameters to bind.
    pub fn params(&self) -> usize {
        self.params
    }

    /// The SQL text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The SQL text, owned.
    pub fn into_sql(self) -> String {
        self.sql
    }
}

/// `$1, $2, …, $count`.
pub fn placeholders(count: usize) -> String {
    (1..=count)
        .map(|index| format!("${index}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The highest `$n` in `sql` (0 when there is none).
pub fn highest_placeholder(sql: &str) -> usize {
    Statement::new().part(sql).params()
}

/// `sql` with every `$n` replaced by `values[n - 1]` (literal SQL expressions): how the benchmark
/// turns a service's own statement into a `pgbench` script line without re-typing it.
pub fn inline(sql: &str, values: &[&str]) -> Result<String, String> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            out.push('$');
            rest = after;
            continue;
        }
        let number: usize = after[..digits]
            .parse()
            .map_err(|_| format!("bad placeholder in {sql}"))?;
        let value = values
            .get(number.wrapping_sub(1))
            .ok_or_else(|| format!("${number} has no value ({} given)", values.len()))?;
        out.push_str(value);
        rest = &after[digits..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_numbered_after_each_other() {
        let statement = Statement::new()
            .text("WITH a AS (")
            .part("INSERT INTO t (x, y) VALUES ($1, $2) RETURNING 1")
            .text("), b AS (")
            .part("UPDATE u SET z = $1 WHERE k = $2 AND j = $2 RETURNING 1")
            .text(") SELECT 1");
        assert_eq!(
            statement.sql(),
            "WITH a AS (INSERT INTO t (x, y) VALUES ($1, $2) RETURNING 1), \
             b AS (UPDATE u SET z = $3 WHERE k = $4 AND j = $4 RETURNING 1) SELECT 1"
        );
        assert_eq!(statement.params(), 4);
    }

    #[test]
    fn inlining_replaces_every_placeholder_by_its_value() {
        let sql = Statement::new().part("VALUES ($1, $2)").part(", ($1)").into_sql();
        assert_eq!(
            inline(&sql, &["'a'", "now()", "10"]).unwrap(),
            "VALUES ('a', now()), (10)"
        );
        assert!(inline(&sql, &["'a'"]).is_err());
        assert_eq!(placeholders(3), "$1, $2, $3");
    }
}
