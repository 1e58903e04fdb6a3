//! moatd's durable state: one redb database under the state directory with a
//! table per kind of record (images, sandboxes, containers). Records are
//! JSON values keyed by id, so a record type can grow fields compatibly.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;
use std::sync::Arc;

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("state store")]
    Db(#[source] redb::Error),
    /// A record could not be encoded or decoded.
    #[error("state store record {key} in {table}: {source}")]
    Codec {
        /// Table name.
        table: &'static str,
        /// Record key.
        key: String,
        /// The error.
        source: serde_json::Error,
    },
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

/// A table of JSON records keyed by string id.
#[derive(Debug, Clone, Copy)]
pub struct Table(pub &'static str);

impl Table {
    fn def(&self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.0)
    }
}

/// Images by id (config digest).
pub const IMAGES: Table = Table("images");

/// Pod sandboxes by id.
pub const SANDBOXES: Table = Table("sandboxes");

/// Containers by id.
pub const CONTAINERS: Table = Table("containers");

/// moatd-wide settings kubelet sends (UpdateRuntimeConfig), by name.
pub const RUNTIME: Table = Table("runtime");

/// Handle on the state database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl Store {
    /// Opens (or creates) `<state_dir>/moatd.redb`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(db_err)?;
        let db = Database::create(state_dir.join("moatd.redb")).map_err(db_err)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Inserts or replaces a record.
    pub fn put<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Codec {
            table: table.0,
            key: key.to_string(),
            source,
        })?;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(table.def()).map_err(db_err)?;
            t.insert(key, bytes.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Reads a record, if present.
    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = match tx.open_table(table.def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        match t.get(key).map_err(db_err)? {
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(|source| StoreError::Codec {
                    table: table.0,
                    key: key.to_string(),
                    source,
                }),
            None => Ok(None),
        }
    }

    /// Every record of a table, in key order.
    pub fn list<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = match tx.open_table(table.def()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let key = k.value().to_string();
            let value = serde_json::from_slice(v.value()).map_err(|source| StoreError::Codec {
                table: table.0,
                key: key.clone(),
                source,
            })?;
            out.push((key, value));
        }
        Ok(out)
    }

    /// Every record's value, in key order.
    pub fn values<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<T>, StoreError> {
        Ok(self.list(table)?.into_iter().map(|(_, v)| v).collect())
    }

    /// Deletes a record; true if it existed.
    pub fn delete(&self, table: Table, key: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let existed = {
            let mut t = tx.open_table(table.def()).map_err(db_err)?;
            let removed = t.remove(key).map_err(db_err)?;
            removed.is_some()
        };
        tx.commit().map_err(db_err)?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.get::<String>(IMAGES, "a").unwrap(), None);
            assert!(s.list::<String>(IMAGES).unwrap().is_empty());
            s.put(IMAGES, "a", &"one".to_string()).unwrap();
            s.put(IMAGES, "b", &"two".to_string()).unwrap();
            assert!(s.delete(IMAGES, "b").unwrap());
            assert!(!s.delete(IMAGES, "b").unwrap());
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.list::<String>(IMAGES).unwrap(),
            vec![("a".to_string(), "one".to_string())]
        );
    }

    #[test]
    fn get_is_by_full_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put(IMAGES, "abc1", &1u32).unwrap();
        s.put(IMAGES, "abc2", &2u32).unwrap();
        assert_eq!(s.get::<u32>(IMAGES, "abc2").unwrap(), Some(2));
        assert_eq!(s.get::<u32>(IMAGES, "abc").unwrap(), None);
        assert_eq!(s.values::<u32>(IMAGES).unwrap(), vec![1, 2]);
    }

    #[test]
    fn undecodable_record_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put(IMAGES, "k", &"text").unwrap();
        let e = s.get::<u32>(IMAGES, "k").unwrap_err().to_string();
        assert!(e.contains("images") && e.contains('k'), "{e}");
    }
}
