//! Pools' turns and away periods in the SQLite store.

use super::*;

#[async_trait]
impl Pools for SqliteStore {
    /// One writer job: the contact's earlier pick, or the members' weights read, a pick,
    /// and both written back.
    async fn take_turn(
        &self,
        (location, contact): (&LocationId, &ContactId),
        pool: &str,
        members: &[PoolMember],
    ) -> Result<Option<UserId>, StoreError> {
        if members.is_empty() {
            return Ok(None);
        }
        let (location, pool) = (location.as_str().to_owned(), pool.to_owned());
        let contact = contact.as_str().to_owned();
        let members = members.to_vec();
        let picked = self
            .writer
            .write(move |conn| {
                let before: Option<String> = conn
                    .prepare_cached(
                        "SELECT user_id FROM pool_picks WHERE location_id = ?1 AND pool = ?2 AND contact_id = ?3",
                    )?
                    .query_row((&location, &pool, &contact), |r| r.get(0))
                    .optional()?;
                if let Some(kept) = members.iter().find(|(u, _)| Some(u.as_str()) == before.as_deref()) {
                    return Ok(Some(kept.0.clone()));
                }
                let mut current = Vec::with_capacity(members.len());
                let mut read = conn.prepare_cached(
                    "SELECT current FROM pool_turns WHERE location_id = ?1 AND pool = ?2 AND user_id = ?3",
                )?;
                for (user, _) in &members {
                    let params = rusqlite::params![location, pool, user.as_str()];
                    current.push(read.query_row(params, |r| r.get(0)).optional()?.unwrap_or(0));
                }
                let Some(pick) = smooth_pick(&members, &mut current) else {
                    return Ok(None);
                };
                let mut write = conn.prepare_cached(
                    "INSERT INTO pool_turns (location_id, pool, user_id, current, handed)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (location_id, pool, user_id)
                     DO UPDATE SET current = excluded.current, handed = handed + excluded.handed",
                )?;
                for (i, ((user, _), weight)) in members.iter().zip(&current).enumerate() {
                    let handed = i64::from(i == pick);
                    write.execute(rusqlite::params![location, pool, user.as_str(), weight, handed])?;
                }
                let user = members[pick].0.clone();
                conn.prepare_cached(
                    "INSERT INTO pool_picks (location_id, pool, contact_id, user_id, picked_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (location_id, pool, contact_id)
                     DO UPDATE SET user_id = excluded.user_id, picked_at = excluded.picked_at",
                )?
                .execute((&location, &pool, &contact, user.as_str(), now_ms()))?;
                Ok(Some(user))
            })
            .await?;
        Ok(picked)
    }

    async fn pool_state(
        &self,
        (location, contact): (&LocationId, &ContactId),
        pool: &str,
    ) -> Result<PoolState, StoreError> {
        let pick: Option<String> = sqlx::query_scalar(
            "SELECT user_id FROM pool_picks WHERE location_id = ?1 AND pool = ?2 AND contact_id = ?3",
        )
        .bind(location.as_str())
        .bind(pool)
        .bind(contact.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT user_id, current FROM pool_turns WHERE location_id = ?1 AND pool = ?2",
        )
        .bind(location.as_str())
        .bind(pool)
        .fetch_all(&self.pool)
        .await?;
        pool_state(pick, rows)
    }

    async fn pool_turns(&self) -> Result<Vec<PoolTurns>, StoreError> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(SELECT_POOL_TURNS)
            .fetch_all(&self.pool)
            .await?;
        pool_turns(rows)
    }

    async fn set_away(&self, period: &AwayPeriod) -> Result<(), StoreError> {
        let row = (
            period.user.as_str().to_owned(),
            period.from.to_string(),
            period.to.to_string(),
        );
        self.writer
            .write(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO away (user_id, starts_on, ends_on, set_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (user_id, starts_on, ends_on) DO NOTHING",
                )?
                .execute((&row.0, &row.1, &row.2, now_ms()))?;
                Ok(())
            })
            .await?;
        self.away.forget();
        Ok(())
    }

    async fn away_periods(&self) -> Result<Vec<AwayPeriod>, StoreError> {
        self.away
            .through(async {
                let rows: Vec<(String, String, String)> =
                    sqlx::query_as(SELECT_AWAY).fetch_all(&self.pool).await?;
                away_periods(rows)
            })
            .await
    }

    async fn clear_away(&self, user: &UserId) -> Result<u64, StoreError> {
        let user = user.as_str().to_owned();
        let cleared = self
            .writer
            .write(move |conn| {
                let gone = conn
                    .prepare_cached("DELETE FROM away WHERE user_id = ?1")?
                    .execute([&user])?;
                Ok(u64::try_from(gone).unwrap_or(0))
            })
            .await;
        self.away.forget();
        cleared
    }
}
