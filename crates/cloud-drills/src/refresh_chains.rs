//! Refresh-token chains across the database drill's outage (issue 9, drill 3: "no refresh-token
//! rotation is lost or duplicated").
//!
//! Before the load, a user of a tenant of its own logs in [`CHAINS`] times through the hosted
//! login form (authorization code + PKCE, over HTTP, as a browser would), which gives as many
//! refresh-token families. During the whole load each chain rotates its refresh token
//! sequentially, one rotation every [`ROTATE_EVERY`]: on 200 it continues with the new token; on
//! any other answer it keeps the token it holds and tries it again later; without a response it
//! cannot know whether the rotation happened (a retry with the old token could be reuse), so the
//! chain is ambiguous and stops. Login attempts (the form POST) run alongside, one a second.
//!
//! Afterwards: every chain rotates once more with the last token it received (a rotation that
//! answered 503 must not have consumed it; if it did, this retry is reuse and revokes the
//! family), and PostgreSQL must hold, per family, exactly one row per token the client received,
//! each but the last used once, the last one unused, and the family not revoked. The tenant's
//! audit events must be exactly its three setup events.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::drills::secs;
use crate::infra::PrivatePostgres;
use crate::load::{Bounds, Load, Outcome, Record, Summary};

/// Refresh-token families driven through the outage.
pub(crate) const CHAINS: usize = 8;
/// How often each chain rotates (the next rotation starts this long after the previous one
/// started, or at once if that one took longer).
const ROTATE_EVERY: Duration = Duration::from_millis(150);
/// A request without a complete response after this long is lost, as in [`crate::load`].
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A login attempt refused during the outage must be refused within this long (a clear 503, no
/// hang).
const LOGIN_ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// RFC 7636 appendix B's code verifier and its S256 challenge (the drill has no SHA-256 of its
/// own; codes are single-use and bound to the client either way).
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const TENANT: &str = "refresh-chains";
const SCOPE: &str = "openid";

/// The tenant, public client and user of the chains, and a client that never follows redirects
/// (the code is in the 303's `Location`).
#[derive(Debug)]
pub(crate) struct Setup {
    issuer: String,
    http: reqwest::Client,
    tenant_id: String,
    client_id: String,
    redirect_uri: String,
    email: String,
    password: String,
    /// The refresh token each login's code was redeemed for.
    firsts: Vec<String>,
}

impl Setup {
    /// Creates the tenant, a public client with `redirect_uri` `http://{callback}/callback`
    /// (which answers 200, so that a browser following the login's 303 lands somewhere), a user,
    /// and logs the user in [`CHAINS`] times.
    pub(crate) async fn create(
        issuer: &str,
        admin_token: &str,
        callback: SocketAddr,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        let post = |path: String, body: Value| {
            let http = http.clone();
            let url = format!("{issuer}{path}");
            async move {
                let response = http
                    .post(&url)
                    .bearer_auth(admin_token)
                    .json(&body)
                    .send()
                    .await
                    .with_context(|| format!("POST {url}"))?;
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if status != reqwest::StatusCode::CREATED {
                    bail!("POST {url} answered {status}: {body}");
                }
                Ok(body)
            }
        };
        let tenant = post("/v1/tenants".into(), json!({ "name": TENANT })).await?;
        let tenant_id = id_of(&tenant["id"])?;
        let redirect_uri = format!("http://{callback}/callback");
        let client = post(
            format!("/v1/tenants/{tenant_id}/clients"),
            json!({
                "name": "refresh-chains-web",
                "kind": "public",
                "grant_types": ["authorization_code", "refresh_token"],
                "redirect_uris": [redirect_uri],
                "scopes": [SCOPE],
            }),
        )
        .await?;
        let client_id = id_of(&client["client"]["id"])?;
        let email = "chains@refresh-chains.test".to_string();
        let password = crate::drills::secret();
        post(
            format!("/v1/tenants/{tenant_id}/users"),
            json!({ "email": email, "password": password }),
        )
        .await?;
        let mut setup = Self {
            issuer: issuer.to_string(),
            http,
            tenant_id,
            client_id,
            redirect_uri,
            email,
            password,
            firsts: Vec::new(),
        };
        for _ in 0..CHAINS {
            let first = setup.login().await?;
            setup.firsts.push(first);
        }
        Ok(setup)
    }

    fn authorize_query(&self, state: &str) -> Vec<(&'static str, String)> {
        vec![
            ("response_type", "code".into()),
            ("client_id", self.client_id.clone()),
            ("redirect_uri", self.redirect_uri.clone()),
            ("scope", SCOPE.into()),
            ("state", state.into()),
            ("nonce", uuid::Uuid::new_v4().simple().to_string()),
            ("code_challenge", CHALLENGE.into()),
            ("code_challenge_method", "S256".into()),
        ]
    }

    /// The hosted login page: its CSRF cookie, and the form fields to post back (CSRF token,
    /// email and password filled in).
    async fn login_form(&self, state: &str) -> Result<(String, Vec<(&'static str, String)>)> {
        let query = self.authorize_query(state);
        let page = self
            .http
            .get(format!("{}/oauth2/authorize", self.issuer))
            .query(&query)
            .send()
            .await
            .context("GET /oauth2/authorize")?;
        let status = page.status();
        let cookie = page
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_string);
        let html = page.text().await.context("the login page")?;
        let csrf = html
            .split("name=\"csrf_token\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .map(str::to_string);
        let (Some(cookie), Some(csrf)) = (cookie, csrf) else {
            bail!(
                "GET /oauth2/authorize answered {status} without a CSRF cookie and token: {}",
                html.chars().take(300).collect::<String>()
            );
        };
        let mut form = query;
        form.push(("csrf_token", csrf));
        form.push(("email", self.email.clone()));
        form.push(("password", self.password.clone()));
        Ok((cookie, form))
    }

    /// One login through the form, the code redeemed with its verifier: the refresh token.
    async fn login(&self) -> Result<String> {
        let state = uuid::Uuid::new_v4().simple().to_string();
        let (cookie, form) = self.login_form(&state).await?;
        let response = self
            .http
            .post(format!("{}/oauth2/authorize", self.issuer))
            .header("cookie", cookie)
            .form(&form)
            .send()
            .await
            .context("POST /oauth2/authorize")?;
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let Some(location) = location.filter(|_| status == reqwest::StatusCode::SEE_OTHER) else {
            bail!(
                "the login answered {status}, not 303: {}",
                response
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect::<String>()
            );
        };
        let url = reqwest::Url::parse(&location).context("the login's Location")?;
        let param = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        if param("state").as_deref() != Some(state.as_str()) {
            bail!("the login redirected with another state: {location}");
        }
        let code = param("code").with_context(|| format!("no code in {location}"))?;
        let response = self
            .http
            .post(format!("{}/oauth2/token", self.issuer))
            .form(&[
                ("grant_type", "authorization_code"),
                ("client_id", self.client_id.as_str()),
                ("code", code.as_str()),
                ("redirect_uri", self.redirect_uri.as_str()),
                ("code_verifier", VERIFIER),
            ])
            .send()
            .await
            .context("redeeming the code")?;
        let status = response.status();
        let body: Value = response.json().await.context("the token response")?;
        body["refresh_token"]
            .as_str()
            .filter(|t| sql_safe(t))
            .map(str::to_string)
            .with_context(|| {
                format!("no refresh_token in the code's token response ({status}): {body}")
            })
    }
}

fn id_of(value: &Value) -> Result<String> {
    value
        .as_str()
        .filter(|id| sql_safe(id))
        .map(str::to_string)
        .with_context(|| format!("not an id: {value}"))
}

/// Whether `text` can go into SQL between single quotes as it is: ids and base64url tokens.
fn sql_safe(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One refresh-token chain as its client saw it.
#[derive(Debug)]
struct Chain {
    index: usize,
    /// The refresh token from the login: it names the family in the database.
    first: String,
    /// The last refresh token the client received.
    current: String,
    /// Rotations answered 200 with a new refresh token.
    rotated: u64,
    /// Set when the chain stopped before the end: a rotation without a response (the client
    /// cannot know whether it happened), or a refusal of the token it holds.
    stopped: Option<Stop>,
    records: Vec<Record>,
}

#[derive(Debug, Clone)]
enum Stop {
    /// No response: the rotation may or may not have been committed.
    Ambiguous,
    /// A 4xx, or a 200 without a new refresh token: the token the client holds is refused.
    Refused(String),
}

/// What one rotation did, for the chain.
enum Step {
    Rotated(String),
    /// Any other response: keep the token and try again.
    Failed,
    Refused(String),
    Lost,
}

async fn rotate(
    http: &reqwest::Client,
    url: &str,
    client_id: &str,
    token: &str,
    origin: Instant,
    n: u64,
) -> (Record, Step) {
    let started = Instant::now();
    let sent_at = started.duration_since(origin);
    let response = http
        .post(url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", client_id),
            ("refresh_token", token),
        ])
        .send()
        .await;
    let (outcome, body, step) = match response {
        Err(_) => (Outcome::Lost, None, Step::Lost),
        Ok(response) => {
            let status = response.status().as_u16();
            match response.bytes().await {
                Err(_) => (Outcome::Lost, None, Step::Lost),
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    let step = match status {
                        200 => serde_json::from_str::<Value>(&text)
                            .ok()
                            .and_then(|b| b["refresh_token"].as_str().map(str::to_string))
                            .filter(|t| sql_safe(t))
                            .map_or_else(
                                || Step::Refused("200 without a refresh_token".into()),
                                Step::Rotated,
                            ),
                        400..=499 => Step::Refused(format!(
                            "{status} {}",
                            text.chars().take(200).collect::<String>()
                        )),
                        _ => Step::Failed,
                    };
                    let body = (status != 200).then(|| text.chars().take(300).collect::<String>());
                    (Outcome::Status(status), body, step)
                }
            }
        }
    };
    let record = Record {
        n,
        sent_at,
        latency: started.elapsed(),
        outcome,
        body,
    };
    (record, step)
}

impl Chain {
    /// Applies one rotation's result; `false` once the chain must stop.
    fn apply(&mut self, record: Record, step: Step) -> bool {
        self.records.push(record);
        match step {
            Step::Rotated(next) => {
                self.current = next;
                self.rotated += 1;
                true
            }
            Step::Failed => true,
            Step::Refused(why) => {
                self.stopped = Some(Stop::Refused(why));
                false
            }
            Step::Lost => {
                self.stopped = Some(Stop::Ambiguous);
                false
            }
        }
    }
}

/// The chains and the login attempts, running.
#[derive(Debug)]
pub(crate) struct Running {
    stop: Arc<AtomicBool>,
    chains: Vec<tokio::task::JoinHandle<Chain>>,
    logins: Load,
}

/// Starts the chains' rotations and the login attempts (one a second, the form of a login page
/// fetched now: its CSRF cookie and token do not need the database). They run until
/// [`finish`] or `max`.
pub(crate) async fn start(setup: &Setup, origin: Instant, max: Duration) -> Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + max;
    let token_url = format!("{}/oauth2/token", setup.issuer);
    let mut chains = Vec::new();
    for (index, first) in setup.firsts.iter().enumerate() {
        let (http, url, client_id, stop) = (
            setup.http.clone(),
            token_url.clone(),
            setup.client_id.clone(),
            stop.clone(),
        );
        let mut chain = Chain {
            index,
            first: first.clone(),
            current: first.clone(),
            rotated: 0,
            stopped: None,
            records: Vec::new(),
        };
        chains.push(tokio::spawn(async move {
            // Spread the chains over the period.
            let offset = ROTATE_EVERY.mul_f64(index as f64 / CHAINS as f64);
            tokio::time::sleep(offset).await;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let started = Instant::now();
                let (record, step) =
                    rotate(&http, &url, &client_id, &chain.current, origin, n).await;
                n += 1;
                if !chain.apply(record, step) {
                    break;
                }
                tokio::time::sleep(ROTATE_EVERY.saturating_sub(started.elapsed())).await;
            }
            chain
        }));
    }
    let (cookie, form) = setup.login_form("drill-login").await?;
    let url = format!("{}/oauth2/authorize", setup.issuer);
    // The load's client follows the 303 to the callback (which answers 200), as a browser does.
    let logins = Load::start(
        origin,
        Bounds {
            rate_per_sec: 1,
            max_requests: max.as_secs().max(1),
            max_duration: max,
            request_timeout: REQUEST_TIMEOUT,
        },
        Arc::new(move |c, _| c.post(&url).header("cookie", &cookie).form(&form)),
    );
    Ok(Running {
        stop,
        chains,
        logins,
    })
}

/// What the chains showed.
#[derive(Debug)]
pub(crate) struct Checked {
    /// Every rotation, the final one of each chain included, ordered by send time.
    pub(crate) rotations: Vec<Record>,
    /// Every login attempt during the load.
    pub(crate) logins: Vec<Record>,
    pub(crate) details: Vec<String>,
    pub(crate) findings: Vec<String>,
}

/// Stops the chains and the logins, rotates each chain once more with the last token it
/// received, and reconciles the families in PostgreSQL with what the clients saw.
/// `stopped_at`/`up_at`: when PostgreSQL went down and came back, on the drill's clock.
pub(crate) async fn finish(
    running: Running,
    setup: &Setup,
    pg: &PrivatePostgres,
    origin: Instant,
    stopped_at: Duration,
    up_at: Duration,
) -> Result<Checked> {
    running.stop.store(true, Ordering::Relaxed);
    let mut chains = Vec::new();
    for handle in running.chains {
        chains.push(handle.await.context("a refresh chain task failed")?);
    }
    let logins = running.logins.stop().await?;
    let mut findings = Vec::new();
    let mut details = Vec::new();

    // (a) Behaviour: each chain rotates once more with the last token it received.
    let token_url = format!("{}/oauth2/token", setup.issuer);
    let mut final_ok = 0;
    let eligible = chains.iter().filter(|c| c.stopped.is_none()).count();
    for chain in chains.iter_mut().filter(|c| c.stopped.is_none()) {
        let n = chain.records.len() as u64;
        let (record, step) = rotate(
            &setup.http,
            &token_url,
            &setup.client_id,
            &chain.current,
            origin,
            n,
        )
        .await;
        let answer = match (&record.outcome, &record.body) {
            (Outcome::Status(s), Some(body)) => format!("{s} {body}"),
            (Outcome::Status(s), None) => s.to_string(),
            (Outcome::Lost, _) => "no response".to_string(),
        };
        if matches!(step, Step::Rotated(_)) {
            final_ok += 1;
        } else {
            findings.push(format!(
                "refresh chain {}: after the outage, the last refresh token the client received \
                 (after {} rotations) was not accepted: {answer}",
                chain.index, chain.rotated
            ));
        }
        chain.apply(record, step);
    }

    // (b) The database, per family: rows, used rows, the client's last token, revoked.
    let values = chains
        .iter()
        .map(|c| format!("({}, '{}', '{}')", c.index, c.first, c.current))
        .collect::<Vec<_>>()
        .join(", ");
    let hash = |col: &str| format!("encode(sha256(convert_to({col}, 'UTF8')), 'hex')");
    let rows = pg.psql(&format!(
        "SELECT v.chain, coalesce(f.revoked, -1), \
           (SELECT count(*) FROM refresh_tokens t WHERE t.family_id = f.id), \
           (SELECT count(*) FROM refresh_tokens t WHERE t.family_id = f.id AND t.used = 1), \
           (SELECT count(*) FROM refresh_tokens t WHERE t.family_id = f.id AND t.used = 0 AND t.token_hash = {}) \
         FROM (VALUES {values}) AS v(chain, first, last) \
         LEFT JOIN refresh_tokens t0 ON t0.token_hash = {} \
         LEFT JOIN refresh_families f ON f.id = t0.family_id ORDER BY v.chain",
        hash("v.last"),
        hash("v.first"),
    ))?;
    let mut families = std::collections::HashMap::new();
    for line in rows.lines().filter(|l| !l.is_empty()) {
        let v: Vec<i64> = line
            .split('|')
            .filter_map(|x| x.trim().parse().ok())
            .collect();
        if let [chain, revoked, rows, used, last_unused] = v.as_slice() {
            families.insert(*chain, (*revoked, *rows, *used, *last_unused));
        }
    }
    let mut per_family = Vec::new();
    let mut family_ok = 0;
    for c in &chains {
        let seen = i64::try_from(c.rotated).unwrap_or(i64::MAX);
        let Some(&(revoked, rows, used, last_unused)) = families.get(&(c.index as i64)) else {
            findings.push(format!(
                "refresh chain {}: no family in the database for the token of its login",
                c.index
            ));
            continue;
        };
        let figures = format!("{seen}/{rows}/{used}/{revoked}");
        let exact = revoked == 0 && rows == seen + 1 && used == seen && last_unused == 1;
        let verdict = match &c.stopped {
            None if exact => "ok".to_string(),
            // The lost rotation either did not happen, or happened without the client seeing
            // its token: either is consistent, as long as nothing else is off.
            Some(Stop::Ambiguous)
                if revoked == 0
                    && used == rows - 1
                    && (rows == seen + 1 && last_unused == 1
                        || rows == seen + 2 && last_unused == 0) =>
            {
                format!(
                    "ambiguous (a rotation got no response; it {} committed)",
                    if rows == seen + 2 { "was" } else { "was not" }
                )
            }
            _ => {
                findings.push(format!(
                    "refresh chain {}: the client saw {seen} rotations succeed, but its family \
                     has {rows} rows ({used} used), the client's last token {} the unused one, \
                     revoked = {revoked}{}",
                    c.index,
                    if last_unused == 1 { "is" } else { "is not" },
                    match &c.stopped {
                        Some(Stop::Refused(why)) => format!("; the chain was refused: {why}"),
                        Some(Stop::Ambiguous) => "; a rotation got no response".into(),
                        None => String::new(),
                    }
                ));
                "MISMATCH".to_string()
            }
        };
        if verdict == "ok" {
            family_ok += 1;
        }
        per_family.push(format!("{}: {figures} {verdict}", c.index));
    }
    let totals = pg.psql(&format!(
        "SELECT count(DISTINCT family_id), count(*) FROM refresh_tokens WHERE tenant_id = '{}'",
        setup.tenant_id
    ))?;
    let seen_total: u64 = chains.iter().map(|c| c.rotated + 1).sum();
    if totals != format!("{}|{seen_total}", chains.len()) {
        findings.push(format!(
            "the tenant's refresh tokens in the database (families|rows = {totals}) are not the \
             {} families and {seen_total} tokens its clients received",
            chains.len()
        ));
    }

    // (c) Audit: identity audits admin writes only (no token issuance or rotation), so the
    // chains' tenant must hold exactly its three setup events, none lost or repeated.
    let audit = pg.psql(&format!(
        "SELECT action, count(*) FROM audit_events WHERE tenant_id = '{}' GROUP BY action ORDER BY action",
        setup.tenant_id
    ))?;
    let audit = audit.lines().collect::<Vec<_>>().join(", ");
    let token_actions = pg.psql(
        "SELECT count(*) FROM audit_events WHERE action LIKE 'token%' OR action LIKE 'refresh%' OR action LIKE 'login%'",
    )?;
    if audit != "client.create|1, tenant.create|1, user.create|1" {
        findings.push(format!(
            "the refresh-chain tenant's audit events are {audit}, not its three setup events once each"
        ));
    }

    let rotations: Vec<Record> = {
        let mut all: Vec<Record> = chains.iter().flat_map(|c| c.records.clone()).collect();
        all.sort_by_key(|r| r.sent_at);
        all
    };
    let s = Summary::of(&rotations);
    let during = |r: &&Record| r.sent_at >= stopped_at && r.sent_at < up_at;
    let s_during = Summary::of(rotations.iter().filter(during));
    let status = |code: u16| {
        rotations
            .iter()
            .filter(|r| r.outcome == Outcome::Status(code))
            .count()
    };
    // Requests sent during the outage that succeeded: when their answers came, from the stop.
    let answered_ok = |records: &[Record]| {
        let ok: Vec<Duration> = records
            .iter()
            .filter(|r| during(r) && matches!(r.outcome, Outcome::Status(200..=299)))
            .map(|r| (r.sent_at + r.latency).saturating_sub(stopped_at))
            .collect();
        match (ok.iter().min(), ok.iter().max()) {
            (Some(a), Some(b)) => format!(
                " (answered {} to {} after the stop, PostgreSQL back at {})",
                secs(*a),
                secs(*b),
                secs(up_at - stopped_at)
            ),
            _ => String::new(),
        }
    };
    let slowest_503 = rotations
        .iter()
        .filter(|r| r.outcome == Outcome::Status(503))
        .map(|r| r.latency)
        .max()
        .unwrap_or_default();
    details.push(format!(
        "refresh chains: {} logins (authorization code + PKCE through the login form) -> {} chains, \
         one rotation each every {} ms; rotations sent {}, succeeded {}, 503 {} (slowest {}), \
         other failures {}, lost {}; during the outage sent {}, succeeded {}{}; after it, each \
         chain rotated with the last token it received: {final_ok} of {eligible} accepted; per \
         family (rotations seen/rows/used/revoked): {}; {family_ok} of {} exact",
        chains.len(),
        chains.len(),
        ROTATE_EVERY.as_millis(),
        s.sent,
        s.ok,
        status(503),
        secs(slowest_503),
        s.failed() - status(503) as u64,
        s.lost,
        s_during.sent,
        s_during.ok,
        answered_ok(&rotations),
        per_family.join(", "),
        chains.len()
    ));
    details.push(format!(
        "  refresh chains in the database: families|rows of the tenant = {totals} (clients \
         received {seen_total} tokens); audit events of the tenant: {audit}; identity audits no \
         token issuance or rotation (events named token*/refresh*/login*: {token_actions})"
    ));

    // Logins: a clear 503 quickly while the database is down, never a hang. A login sent late in
    // the outage may instead wait for a connection, get one when PostgreSQL is back, and succeed
    // (its time then includes the password hash and the redirect to the callback).
    let l_during: Vec<&Record> = logins.iter().filter(during).collect();
    let refused: Vec<Duration> = l_during
        .iter()
        .filter(|r| r.outcome == Outcome::Status(503))
        .map(|r| r.latency)
        .collect();
    details.push(format!(
        "login form POSTs (1 a second; success = the 303 followed to the client's callback): {}; \
         during the outage {} sent: {} answered 503 (slowest {}), {} succeeded{}",
        crate::drills::describe(&Summary::of(&logins)),
        l_during.len(),
        refused.len(),
        secs(refused.iter().max().copied().unwrap_or_default()),
        l_during
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Status(200..=299)))
            .count(),
        answered_ok(&logins)
    ));
    let bad_logins: Vec<String> = l_during
        .iter()
        .filter(|r| match r.outcome {
            Outcome::Status(503) => r.latency > LOGIN_ANSWER_WITHIN,
            Outcome::Status(200) => false,
            Outcome::Status(_) | Outcome::Lost => true,
        })
        .map(|r| {
            format!(
                "sent {} into the outage: {} after {}",
                secs(r.sent_at - stopped_at),
                match r.outcome {
                    Outcome::Status(s) => s.to_string(),
                    Outcome::Lost => "no response".into(),
                },
                secs(r.latency)
            )
        })
        .collect();
    if !bad_logins.is_empty() {
        findings.push(format!(
            "login attempts during the outage were not a clear 503 within {}: {}",
            secs(LOGIN_ANSWER_WITHIN),
            bad_logins.join("; ")
        ));
    }
    if l_during.is_empty() {
        bail!("no login attempt was sent during the outage");
    }
    Ok(Checked {
        rotations,
        logins,
        details,
        findings,
    })
}

/// A login failure's message: the text of the error page's alert, not its HTML head.
pub(crate) fn login_failure_samples(records: &[Record]) -> Vec<String> {
    let shown: Vec<Record> = records
        .iter()
        .map(|r| {
            let body = r.body.as_deref().map(|b| {
                b.split("role=\"alert\">")
                    .nth(1)
                    .and_then(|rest| rest.split('<').next())
                    .unwrap_or(b)
                    .to_string()
            });
            Record { body, ..r.clone() }
        })
        .collect();
    crate::drills::failure_samples(&shown)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn only_ids_and_base64url_tokens_go_into_sql() {
        assert!(sql_safe("0194f3c2-7d1e-7c3a-9b1f-5a2e4d6c8b0a"));
        assert!(sql_safe("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"));
        assert!(!sql_safe(""));
        assert!(!sql_safe("x' OR '1'='1"));
        assert!(!sql_safe("a b"));
    }

    #[test]
    fn a_chain_keeps_its_token_on_a_failure_and_stops_when_it_cannot_know() {
        let rec = |n| Record {
            n,
            sent_at: Duration::from_millis(n),
            latency: Duration::ZERO,
            outcome: Outcome::Status(200),
            body: None,
        };
        let mut c = Chain {
            index: 0,
            first: "a".into(),
            current: "a".into(),
            rotated: 0,
            stopped: None,
            records: Vec::new(),
        };
        assert!(c.apply(rec(0), Step::Rotated("b".into())));
        assert!(c.apply(rec(1), Step::Failed));
        assert_eq!((c.current.as_str(), c.rotated), ("b", 1));
        assert!(!c.apply(rec(2), Step::Lost));
        assert!(matches!(c.stopped, Some(Stop::Ambiguous)));
        assert_eq!(c.records.len(), 3);
    }

    #[test]
    fn login_failures_show_the_alert_text() {
        let r = Record {
            n: 0,
            sent_at: Duration::ZERO,
            latency: Duration::ZERO,
            outcome: Outcome::Status(503),
            body: Some("<!doctype html><html><body><main><h1>Sign-in error</h1><p role=\"alert\">the service is temporarily unavailable</p></main></body></html>".into()),
        };
        assert_eq!(
            login_failure_samples(&[r]),
            vec!["1 x 503 the service is temporarily unavailable".to_string()]
        );
    }
}
