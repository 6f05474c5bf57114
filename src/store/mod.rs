//! Persistent state: nodes, their MACs and the transition history, on SQLite (default, no setup)
//! or PostgreSQL (`postgres://` URL), through sqlx's Any driver with one migration set per dialect.

mod boot;
mod deploy;
mod nodes;

pub use boot::{Lease, LeaseChange, NodeEvent};
pub use deploy::{DeployImage, DeployStep, Deployment, StoredInventory};
pub use nodes::{EnrollReport, HistoryEntry, NodeChange};

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error while {context}")]
    Database {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("database migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("unsupported database URL (use sqlite://PATH or postgres://…)")]
    UnsupportedUrl,
    #[error("node '{0}' not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("node '{name}' is {actual}, not {expected}: its state changed concurrently")]
    StateChanged {
        name: String,
        expected: String,
        actual: String,
    },
    #[error("stored record of node '{name}' is unreadable: {message}")]
    Corrupt { name: String, message: String },
}

/// Attaches what the store was doing to a sqlx error.
pub(crate) trait Context<T> {
    fn context(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, sqlx::Error> {
    fn context(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Database { context, source })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
}

impl Store {
    /// Connects and applies any pending migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        let options = AnyPoolOptions::new().max_connections(match dialect {
            // One connection: SQLite has one writer anyway, and a deferred transaction that reads
            // then writes beside another writer fails with SQLITE_BUSY_SNAPSHOT instead of
            // waiting. Queueing in the pool is both correct and fast enough (WAL, NORMAL sync).
            Dialect::Sqlite => 1,
            Dialect::Postgres => 8,
        });
        let options = if dialect == Dialect::Sqlite {
            // WAL with synchronous=NORMAL: no corruption on power loss, at most the last
            // transactions lost, and no fsync per commit (which made every DHCP lease cost
            // milliseconds).
            options.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::Executor::execute(conn, "PRAGMA synchronous = NORMAL").await?;
                    Ok(())
                })
            })
        } else {
            options
        };
        let pool = options.connect(url).await.context("connecting")?;
        if dialect == Dialect::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .context("enabling WAL")?;
        }
        let migrator = match dialect {
            Dialect::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Dialect::Postgres => sqlx::migrate!("migrations/postgres"),
        };
        migrator.run(&pool).await.map_err(StoreError::Migrate)?;
        Ok(Store { pool, dialect })
    }

    /// The default store: `kiln.db` in the data directory.
    pub async fn open_in(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join("kiln.db");
        Store::connect(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
