//! Keyset pagination shared by every List RPC: a validated page size and an opaque cursor
//! (`page_token`) naming the sort timestamp and id of the last item of the previous page.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::Violations;

/// Default page size when the client sends 0.
pub const DEFAULT_PAGE_SIZE: i64 = 50;
/// Largest page size accepted.
pub const MAX_PAGE_SIZE: i32 = 500;

/// Keyset position: the sort timestamp and the id of the last item of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Sort timestamp.
    pub created_at: DateTime<Utc>,
    /// Tie-breaker.
    pub id: Uuid,
}

impl Cursor {
    /// The opaque token handed to clients.
    pub fn token(&self) -> String {
        hex::encode(format!("v1|{}|{}", self.created_at.timestamp_micros(), self.id))
    }

    /// Reads a token produced by [`Cursor::token`], and only such a token: one that re-encodes
    /// to itself (so upper-case hex, `+1` or a braced UUID are refused rather than aliased) and
    /// whose time lies in [`CURSOR_RANGE`] (one outside PostgreSQL's `timestamptz` range would
    /// fail the query as an internal error instead of the request as invalid).
    pub fn from_token(token: &str) -> Option<Self> {
        let text = String::from_utf8(hex::decode(token).ok()?).ok()?;
        let mut parts = text.split('|');
        if parts.next()? != "v1" {
            return None;
        }
        let micros: i64 = parts.next()?.parse().ok()?;
        let id = Uuid::parse_str(parts.next()?).ok()?;
        let cursor = Self {
            created_at: DateTime::from_timestamp_micros(micros)?,
            id,
        };
        (CURSOR_RANGE.contains(&micros) && cursor.token() == token).then_some(cursor)
    }
}

/// The sort times a page token may carry, in microseconds since the epoch: 0001-01-01 to
/// 9999-12-31 (inside PostgreSQL's `timestamptz` range, and [`PageRequest::descending_bound`]'s
/// upper end).
pub const CURSOR_RANGE: std::ops::RangeInclusive<i64> = -62_135_596_800_000_000..=253_402_300_799_999_999;

/// A validated page request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Items per page.
    pub size: i64,
    /// Position after which the page starts.
    pub after: Option<Cursor>,
}

impl PageRequest {
    /// Validates `page_size` (0 means [`DEFAULT_PAGE_SIZE`], at most [`MAX_PAGE_SIZE`]) and
    /// `page_token`, naming the field at fault.
    pub fn parse(page_size: i32, page_token: &str) -> Result<Self, Violations> {
        let mut violations = Violations::default();
        let size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            1..=MAX_PAGE_SIZE => i64::from(page_size),
            other => {
                violations.add(
                    "page_size",
                    format!("must be between 0 and {MAX_PAGE_SIZE}, got {other}"),
                );
                0
            }
        };
        let after = if page_token.is_empty() {
            None
        } else {
            let cursor = Cursor::from_token(page_token);
            if cursor.is_none() {
                violations.add("page_token", "is not a token returned by this API");
            }
            cursor
        };
        if violations.is_empty() {
            Ok(Self { size, after })
        } else {
            Err(violations)
        }
    }

    /// The lower bound of an ascending page: the cursor, or the beginning of time.
    pub fn ascending_bound(&self) -> (DateTime<Utc>, Uuid) {
        self.after.map_or((DateTime::UNIX_EPOCH, Uuid::nil()), |cursor| {
            (cursor.created_at, cursor.id)
        })
    }

    /// The upper bound of a descending page: the cursor, or 9999-12-31 (inside PostgreSQL's range).
    pub fn descending_bound(&self) -> (DateTime<Utc>, Uuid) {
        let far_future = DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::UNIX_EPOCH);
        self.after
            .map_or((far_future, Uuid::max()), |cursor| (cursor.created_at, cursor.id))
    }

    /// Items fetched for this page: one more than its size, to learn whether another page exists.
    pub fn fetch_limit(&self) -> i64 {
        self.size + 1
    }

    /// Trims the look-ahead item; returns the cursor of the page's last item when there is more.
    pub fn next_cursor<T>(&self, items: &mut Vec<T>, cursor: impl Fn(&T) -> Cursor) -> Option<Cursor> {
        let size = usize::try_from(self.size).unwrap_or(usize::MAX);
        if items.len() > size {
            items.truncate(size);
            items.last().map(cursor)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_rejected() {
        let cursor = Cursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: Uuid::new_v4(),
        };
        let page = PageRequest::parse(10, &cursor.token()).unwrap();
        assert_eq!(page.after, Some(cursor));
        assert_eq!(PageRequest::parse(10, "zz").unwrap_err().fields(), ["page_token"]);
        assert_eq!(PageRequest::parse(501, "").unwrap_err().fields(), ["page_size"]);
        assert_eq!(PageRequest::parse(-1, "").unwrap_err().fields(), ["page_size"]);
        assert_eq!(PageRequest::parse(0, "").unwrap().size, DEFAULT_PAGE_SIZE);
    }

    /// Found by the `page_token` fuzz target: tokens that decoded to a cursor but were not the
    /// token of that cursor (aliases), or named a time PostgreSQL cannot compare with.
    #[test]
    fn only_canonical_tokens_in_range_are_accepted() {
        let id = Uuid::parse_str("0191d1c2-8f5e-7c3a-9b1d-3e5f7a9c1b2d").unwrap();
        let cursor = Cursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id,
        };
        let token = cursor.token();
        assert_eq!(Cursor::from_token(&token), Some(cursor));
        // the same bytes in upper-case hex
        assert_eq!(Cursor::from_token(&token.to_uppercase()), None);
        for alias in [
            format!("v1|+1700000000123456|{id}"),
            format!("v1|01700000000123456|{id}"),
            format!("v1|1700000000123456|{}", id.simple()),
            format!("v1|1700000000123456|{{{id}}}"),
            format!("v1|1700000000123456|{id}|more"),
        ] {
            assert_eq!(Cursor::from_token(&hex::encode(&alias)), None, "{alias}");
        }
        let at = |micros: i64| hex::encode(format!("v1|{micros}|{id}"));
        assert!(Cursor::from_token(&at(*CURSOR_RANGE.start())).is_some());
        assert!(Cursor::from_token(&at(*CURSOR_RANGE.end())).is_some());
        // year -1000: chrono has it, PostgreSQL's timestamptz does not
        assert_eq!(Cursor::from_token(&at(-93_706_495_622_000_000)), None);
        assert_eq!(Cursor::from_token(&at(*CURSOR_RANGE.end() + 1)), None);
    }

    #[test]
    fn the_look_ahead_item_is_trimmed() {
        let page = PageRequest::parse(2, "").unwrap();
        let at = |second| Cursor {
            created_at: DateTime::from_timestamp(second, 0).unwrap(),
            id: Uuid::nil(),
        };
        let mut items = vec![1, 2, 3];
        assert_eq!(page.next_cursor(&mut items, |item| at(*item)), Some(at(2)));
        assert_eq!(items, [1, 2]);
        let mut items = vec![1, 2];
        assert_eq!(page.next_cursor(&mut items, |item| at(*item)), None);
    }
}
