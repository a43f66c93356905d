//! Reading columns with the store's conventions: flags are 0/1 integers, times are
//! millisecond integers, JSON is text.

use crate::error::{Error, Result};
use crate::types::Timestamp;
use serde::de::DeserializeOwned;
use sqlx::any::AnyRow;
use sqlx::Row;

pub(crate) trait RowExt {
    fn i64(&self, col: &str) -> Result<i64>;
    fn opt_i64(&self, col: &str) -> Result<Option<i64>>;
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn flag(&self, col: &str) -> Result<bool>;
    fn ts(&self, col: &str) -> Result<Timestamp>;
    fn opt_ts(&self, col: &str) -> Result<Option<Timestamp>>;
    fn blob(&self, col: &str) -> Result<Vec<u8>>;
    fn opt_blob(&self, col: &str) -> Result<Option<Vec<u8>>>;
    fn json<T: DeserializeOwned>(&self, col: &str) -> Result<T>;
}

impl RowExt for AnyRow {
    fn i64(&self, col: &str) -> Result<i64> {
        Ok(self.try_get::<i64, _>(col)?)
    }
    fn opt_i64(&self, col: &str) -> Result<Option<i64>> {
        Ok(self.try_get::<Option<i64>, _>(col)?)
    }
    fn text(&self, col: &str) -> Result<String> {
        Ok(self.try_get::<String, _>(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        Ok(self.try_get::<Option<String>, _>(col)?)
    }
    fn flag(&self, col: &str) -> Result<bool> {
        Ok(self.i64(col)? != 0)
    }
    fn ts(&self, col: &str) -> Result<Timestamp> {
        Ok(Timestamp(self.i64(col)?))
    }
    fn opt_ts(&self, col: &str) -> Result<Option<Timestamp>> {
        Ok(self.opt_i64(col)?.map(Timestamp))
    }
    fn blob(&self, col: &str) -> Result<Vec<u8>> {
        Ok(self.try_get::<Vec<u8>, _>(col)?)
    }
    fn opt_blob(&self, col: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.try_get::<Option<Vec<u8>>, _>(col)?)
    }
    fn json<T: DeserializeOwned>(&self, col: &str) -> Result<T> {
        let s = self.text(col)?;
        serde_json::from_str(&s).map_err(|e| Error::Corrupt(format!("column {col}: {e}")))
    }
}

pub(crate) fn flag(b: bool) -> i64 {
    i64::from(b)
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Corrupt(format!("cannot encode JSON: {e}")))
}
