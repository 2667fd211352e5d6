//! The installations of the PostgreSQL store.

use super::*;

fn now_ms() -> i64 {
    millis(SystemTime::now())
}

#[async_trait]
impl Installations for PgStore {
    async fn save_installation(
        &self,
        t: &InstallTokens,
        holder: Option<&str>,
    ) -> Result<bool, StoreError> {
        let written = sqlx::query(
            "INSERT INTO installations (id, kind, company_id, access_token, refresh_token, scopes,
                 issued_at, expires_at, state, problem, version, updated_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, 'active', NULL, 1, $9
             WHERE $10::text IS NULL OR EXISTS (SELECT 1 FROM installations
                 WHERE id = $1 AND refresh_owner = $10 AND refresh_until > $9)
             ON CONFLICT (id) DO UPDATE SET kind = excluded.kind,
                 company_id = excluded.company_id, access_token = excluded.access_token,
                 refresh_token = excluded.refresh_token, scopes = excluded.scopes,
                 issued_at = excluded.issued_at, expires_at = excluded.expires_at,
                 state = 'active', problem = NULL, version = installations.version + 1,
                 refresh_owner = NULL, refresh_until = NULL, updated_at = excluded.updated_at
             -- A refresher whose lease lapsed (another took it) does not overwrite.
             WHERE $10::text IS NULL OR (installations.refresh_owner = $10 AND installations.refresh_until > $9)",
        )
        .bind(&t.id)
        .bind(t.kind.as_str())
        .bind(&t.company_id)
        .bind(&t.access_token)
        .bind(&t.refresh_token)
        .bind(&t.scopes)
        .bind(t.issued_at.map(millis))
        .bind(t.expires_at.map(millis))
        .bind(now_ms())
        .bind(holder)
        .execute(&self.pool)
        .await?;
        Ok(written.rows_affected() > 0)
    }

    async fn installation(&self, id: &str) -> Result<Option<Installation>, StoreError> {
        let sql = format!("SELECT {INSTALLATION_COLUMNS} FROM installations WHERE id = $1");
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
        let now = now_ms();
        // One statement: the row lock it takes makes concurrent takers wait and then see
        // the lease (or the new version) the first one wrote.
        let taken = sqlx::query(
            "UPDATE installations SET refresh_owner = $2, refresh_until = $4
             WHERE id = $1 AND version = $3 AND state = 'active'
               AND (refresh_until IS NULL OR refresh_until <= $5)",
        )
        .bind(id)
        .bind(owner)
        .bind(version)
        .bind(lease_until(now, lease))
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(taken.rows_affected() > 0)
    }

    async fn end_refresh(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE installations SET refresh_owner = NULL, refresh_until = NULL
             WHERE id = $1 AND refresh_owner = $2",
        )
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_install_state(
        &self,
        id: &str,
        state: InstallState,
        problem: Option<&str>,
    ) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE installations SET state = $2, problem = $3, version = version + 1,
                 refresh_owner = NULL, refresh_until = NULL, updated_at = $4,
                 access_token = CASE WHEN $2 = 'uninstalled' THEN NULL ELSE access_token END,
                 refresh_token = CASE WHEN $2 = 'uninstalled' THEN NULL ELSE refresh_token END
             WHERE id = $1",
        )
        .bind(id)
        .bind(state.as_str())
        .bind(problem)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(changed.rows_affected() > 0)
    }
}
