//! The admin API of pools: `GET /admin/pools` (as `autofollow pools`), and away periods set
//! without editing rule files: `POST /admin/away`, `DELETE /admin/away/{user}`.

use super::*;

/// Each pool of the rules in force with its members, who is away, the fallback and the
/// turns handed out.
pub(super) async fn pools(State(state): State<AppState>) -> Response {
    let rules = state.rules.current();
    let (set, turns) = match (
        state.store.away_periods().await,
        state.store.pool_turns().await,
    ) {
        (Ok(set), Ok(turns)) => (set, turns),
        (Err(e), _) | (_, Err(e)) => return internal(e),
    };
    let pools: Vec<serde_json::Value> = rules
        .pools()
        .values()
        .map(|pool| {
            let members: Vec<_> = pool.members.iter().map(|(name, user, weight)| {
                json!({ "name": name, "user": user.as_str(), "weight": weight })
            }).collect();
            let in_file = pool.away.iter().map(|(u, from, to)| (u, from, to, "rules"));
            let at_run = set.iter().filter(|p| pool.has(&p.user)).map(|p| (&p.user, &p.from, &p.to, "set"));
            let away: Vec<_> = in_file.chain(at_run).map(|(user, from, to, source)| {
                json!({ "user": user.as_str(), "from": from.to_string(), "to": to.to_string(), "source": source })
            }).collect();
            let handed: Vec<_> = turns.iter().filter(|t| t.pool == pool.name).map(|t| {
                json!({ "location": t.location.as_str(), "user": t.user.as_str(), "handed": t.handed })
            }).collect();
            let fallback = pool.fallback.as_ref().map(|(_, id)| id.as_str());
            json!({ "name": pool.name, "origin": pool.origin.to_string(), "members": members,
                    "away": away, "fallback": fallback, "turns": handed })
        })
        .collect();
    Json(json!({ "pools": pools })).into_response()
}

#[derive(Deserialize)]
pub(super) struct Away {
    /// An alias of the rules in force, or a user id.
    user: String,
    from: String,
    to: String,
}

/// Records an away period (inclusive dates): `{"away":{"user","from","to"}}`; 400 on a bad
/// user or date.
pub(super) async fn set_away(State(state): State<AppState>, Json(away): Json<Away>) -> Response {
    let user = match state.rules.current().user_named(&away.user) {
        Ok(user) => user,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let period = match crate::store::AwayPeriod::parse(user, &away.from, &away.to) {
        Ok(period) => period,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match state.store.set_away(&period).await {
        Ok(()) => Json(json!({ "away": {
            "user": period.user.as_str(), "from": period.from.to_string(), "to": period.to.to_string()
        }}))
        .into_response(),
        Err(e) => internal(e),
    }
}

/// Forgets a user's away periods set at run time: `{"cleared":N}`.
pub(super) async fn clear_away(
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Response {
    let user = match state.rules.current().user_named(&user) {
        Ok(user) => user,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match state.store.clear_away(&user).await {
        Ok(cleared) => Json(json!({ "cleared": cleared })).into_response(),
        Err(e) => internal(e),
    }
}
