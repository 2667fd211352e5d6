//! The installations of the SQLite store.

use super::*;

#[async_trait]
impl Installations for SqliteStore {
    async fn save_installation(
        &self,
        tokens: &InstallTokens,
        holder: Option<&str>,
    ) -> Result<bool, StoreError> {
        let t = tokens.clone();
        let holder = holder.map(str::to_owned);
        self.writer
            .write(move |conn| {
                let now = now_ms();
                let written = conn
                    .prepare_cached(
                        "INSERT INTO installations (id, kind, company_id, access_token, refresh_token, scopes,
                             issued_at, expires_at, state, problem, version, updated_at)
                         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'active', NULL, 1, ?9
                         WHERE ?10 IS NULL OR EXISTS (SELECT 1 FROM installations
                             WHERE id = ?1 AND refresh_owner = ?10 AND refresh_until > ?9)
                         ON CONFLICT (id) DO UPDATE SET kind = excluded.kind,
                             company_id = excluded.company_id, access_token = excluded.access_token,
                             refresh_token = excluded.refresh_token, scopes = excluded.scopes,
                             issued_at = excluded.issued_at, expires_at = excluded.expires_at,
                             state = 'active', problem = NULL, version = installations.version + 1,
                             refresh_owner = NULL, refresh_until = NULL, updated_at = excluded.updated_at",
                    )?
                    .execute(rusqlite::params![
                        t.id,
                        t.kind.as_str(),
                        t.company_id,
                        t.access_token,
                        t.refresh_token,
                        t.scopes,
                        t.issued_at.map(millis),
                        t.expires_at.map(millis),
                        now,
                        holder,
                    ])?;
                Ok(written > 0)
            })
            .await
    }

    async fn installation(&self, id: &str) -> Result<Option<Installation>, StoreError> {
        let sql = format!("SELECT {INSTALLATION_COLUMNS} FROM installations WHERE id = ?");
        let row: Option<InstallationRow> = sqlx::query_as(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.into_installation(now_ms())).transpose()
    }

    async fn installations(&self) -> Result<Vec<Installation>, StoreError> {
        let sql = format!("SELECT {INSTALLATION_COLUMNS} FROM installations ORDER BY id");
        let rows: Vec<InstallationRow> = sqlx::query_as(&sql).fetch_all(&self.pool).await?;
        let now = now_ms();
        rows.into_iter().map(|r| r.into_installation(now)).collect()
    }

    async fn begin_refresh(
        &self,
        id: &str,
        owner: &str,
        version: i64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let (id, owner) = (id.to_owned(), owner.to_owned());
        self.writer
            .write(move |conn| {
                let now = now_ms();
                let taken = conn
                    .prepare_cached(
                        "UPDATE installations SET refresh_owner = ?2, refresh_until = ?4
                         WHERE id = ?1 AND version = ?3 AND state = 'active'
                           AND (refresh_until IS NULL OR refresh_until <= ?5)",
                    )?
                    .execute((&id, &owner, version, lease_until(now, lease), now))?;
                Ok(taken > 0)
            })
            .await
    }

    async fn end_refresh(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        let (id, owner) = (id.to_owned(), owner.to_owned());
        self.writer
            .write(move |conn| {
                conn.prepare_cached(
                    "UPDATE installations SET refresh_owner = NULL, refresh_until = NULL
                     WHERE id = ?1 AND refresh_owner = ?2",
                )?
                .execute((&id, &owner))?;
                Ok(())
            })
            .await
    }

    async fn set_install_state(
        &self,
        id: &str,
        state: InstallState,
        problem: Option<&str>,
    ) -> Result<bool, StoreError> {
        let (id, problem) = (id.to_owned(), problem.map(str::to_owned));
        self.writer
            .write(move |conn| {
                let changed = conn
                    .prepare_cached(
                        "UPDATE installations SET state = ?2, problem = ?3, version = version + 1,
                             refresh_owner = NULL, refresh_until = NULL, updated_at = ?4,
                             access_token = CASE WHEN ?2 = 'uninstalled' THEN NULL ELSE access_token END,
                             refresh_token = CASE WHEN ?2 = 'uninstalled' THEN NULL ELSE refresh_token END
                         WHERE id = ?1",
                    )?
                    .execute((&id, state.as_str(), &problem, now_ms()))?;
                Ok(changed > 0)
            })
            .await
    }
}
