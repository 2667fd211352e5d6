//! Pools' turns and away periods in the PostgreSQL store.

use super::*;

#[async_trait]
impl Pools for PgStore {
    /// One transaction: the contact's earlier pick, or the members' rows made if new, locked
    /// (in user order, so two replicas wait for each other instead of deadlocking), picked
    /// from and written back with the contact's pick.
    async fn take_turn(
        &self,
        (location, contact): (&LocationId, &ContactId),
        pool: &str,
        members: &[PoolMember],
    ) -> Result<Option<UserId>, StoreError> {
        if members.is_empty() {
            return Ok(None);
        }
        let mut tx = self.pool.begin().await?;
        let before: Option<String> = sqlx::query_scalar(
            "SELECT user_id FROM pool_picks WHERE location_id = $1 AND pool = $2 AND contact_id = $3",
        )
        .bind(location.as_str())
        .bind(pool)
        .bind(contact.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(kept) = members
            .iter()
            .find(|(u, _)| Some(u.as_str()) == before.as_deref())
        {
            tx.commit().await?;
            return Ok(Some(kept.0.clone()));
        }
        let Some(pick) = next_turn(&mut tx, location, pool, members).await? else {
            return Ok(None);
        };
        let user = members[pick].0.clone();
        sqlx::query(
            "INSERT INTO pool_picks (location_id, pool, contact_id, user_id, picked_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (location_id, pool, contact_id)
             DO UPDATE SET user_id = excluded.user_id, picked_at = excluded.picked_at",
        )
        .bind(location.as_str())
        .bind(pool)
        .bind(contact.as_str())
        .bind(user.as_str())
        .bind(millis(SystemTime::now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(user))
    }

    async fn pool_state(
        &self,
        (location, contact): (&LocationId, &ContactId),
        pool: &str,
    ) -> Result<PoolState, StoreError> {
        let pick: Option<String> = sqlx::query_scalar(
            "SELECT user_id FROM pool_picks WHERE location_id = $1 AND pool = $2 AND contact_id = $3",
        )
        .bind(location.as_str())
        .bind(pool)
        .bind(contact.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT user_id, current FROM pool_turns WHERE location_id = $1 AND pool = $2",
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
        sqlx::query(
            "INSERT INTO away (user_id, starts_on, ends_on, set_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, starts_on, ends_on) DO NOTHING",
        )
        .bind(period.user.as_str())
        .bind(period.from.to_string())
        .bind(period.to.to_string())
        .bind(millis(SystemTime::now()))
        .execute(&self.pool)
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
        let done = sqlx::query("DELETE FROM away WHERE user_id = $1")
            .bind(user.as_str())
            .execute(&self.pool)
            .await?;
        self.away.forget();
        Ok(done.rows_affected())
    }
}

/// The pool's next turn in the location among `members`, counted (inside the caller's
/// transaction): the members' rows made if new, locked in user order, picked from, written.
async fn next_turn(
    tx: &mut Transaction<'_, Postgres>,
    location: &LocationId,
    pool: &str,
    members: &[PoolMember],
) -> Result<Option<usize>, StoreError> {
    let users: Vec<&str> = members.iter().map(|(u, _)| u.as_str()).collect();
    sqlx::query(
        "INSERT INTO pool_turns (location_id, pool, user_id, current, handed)
             SELECT $1, $2, u, 0, 0 FROM unnest($3::text[]) AS u
             ON CONFLICT (location_id, pool, user_id) DO NOTHING",
    )
    .bind(location.as_str())
    .bind(pool)
    .bind(&users)
    .execute(&mut **tx)
    .await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT user_id, current FROM pool_turns
             WHERE location_id = $1 AND pool = $2 AND user_id = ANY($3)
             ORDER BY user_id FOR UPDATE",
    )
    .bind(location.as_str())
    .bind(pool)
    .bind(&users)
    .fetch_all(&mut **tx)
    .await?;
    let known: HashMap<String, i64> = rows.into_iter().collect();
    let mut current: Vec<i64> = users
        .iter()
        .map(|u| known.get(*u).copied().unwrap_or(0))
        .collect();
    let Some(pick) = smooth_pick(members, &mut current) else {
        return Ok(None);
    };
    let handed: Vec<i64> = (0..members.len()).map(|i| i64::from(i == pick)).collect();
    sqlx::query(
        "UPDATE pool_turns p SET current = t.current, handed = p.handed + t.handed
             FROM unnest($3::text[], $4::bigint[], $5::bigint[]) AS t(user_id, current, handed)
             WHERE p.location_id = $1 AND p.pool = $2 AND p.user_id = t.user_id",
    )
    .bind(location.as_str())
    .bind(pool)
    .bind(&users)
    .bind(&current)
    .bind(&handed)
    .execute(&mut **tx)
    .await?;
    Ok(Some(pick))
}
