//! Simulated Convercus (`shared/api/convercus.md`): legacy JWT login and OAuth token,
//! accounts by identifier, memberships, users, v2 account coupons, activation, redemption.

use super::{
    dispatch, header, items, json_body, ledger_body, text, Data as SimData, Provider, Reply, State,
};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};

pub use super::convercus_generated::Generated;

const P: Provider = Provider::Convercus;

#[derive(Clone, Debug)]
pub struct Account {
    pub id: String,
    pub program: String,
    pub status: String,
    pub card_code: String,
    pub app_code: String,
    pub external_code: String,
    pub memberships: Vec<Value>,
}

/// Convercus' state: seeded accounts, users and account coupons (with indexes, so every
/// lookup is a map probe), plus optionally generated ones (`POST /__sim/generate`).
#[derive(Debug, Default)]
pub struct Data {
    accounts: Vec<Account>,
    users: Vec<Value>,
    /// AccountCoupon objects, all fields as served.
    coupons: Vec<Value>,
    /// Non-DELETED accounts by `(id-type, identifier)`; the first seeded one wins.
    account_index: HashMap<(&'static str, String), usize>,
    /// Account ids of which some seeded account is not ACTIVE.
    inactive: HashSet<String>,
    user_index: HashMap<String, usize>,
    coupon_index: HashMap<String, usize>,
    coupons_of_account: HashMap<String, Vec<usize>>,
    coupons_of_coupon: HashMap<String, Vec<usize>>,
    /// Generated accounts and account coupons (looked up after the seeded ones).
    pub generated: Option<Generated>,
    secret: [u8; 32],
    generation: u64,
}

/// Where an account coupon lives.
#[derive(Clone, Copy)]
enum Slot {
    Seeded(usize),
    Generated,
}

impl Data {
    pub fn from_seed(v: &Value) -> Result<Data, String> {
        let mut d = Data::default();
        for a in items(v, "accounts") {
            let id = text(a, "id");
            if id.is_empty() {
                return Err("convercus.accounts[].id is required".into());
            }
            let memberships = a
                .get("memberships")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut m| {
                    if let Some(o) = m.as_object_mut() {
                        o.entry("accountId").or_insert(json!(id));
                    }
                    m
                })
                .collect();
            d.accounts.push(Account {
                program: a
                    .get("program")
                    .and_then(Value::as_str)
                    .unwrap_or("Pgr-A")
                    .to_owned(),
                status: a
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("ACTIVE")
                    .to_owned(),
                card_code: text(a, "cardCode"),
                app_code: text(a, "appCode"),
                external_code: text(a, "externalCode"),
                memberships,
                id,
            });
        }
        for u in items(v, "users") {
            if text(u, "userId").is_empty() {
                return Err("convercus.users[].userId is required".into());
            }
            d.users.push(u.clone());
        }
        for c in items(v, "accountCoupons") {
            let Some(o) = c.as_object() else {
                return Err("convercus.accountCoupons[] must be objects".into());
            };
            if text(c, "accountCouponId").is_empty() || text(c, "accountId").is_empty() {
                return Err(
                    "convercus.accountCoupons[]: accountCouponId and accountId are required".into(),
                );
            }
            let mut full = Map::new();
            let defaults = json!({
                "couponId": "", "usageType": "DISCOUNT", "externalReference": "",
                "externalCode": null, "maxRedeemCount": 1, "maxRedeemCountGlobal": null,
                "redeemCount": 0, "redeemCountGlobal": 0, "pointsOfRedemption": [],
                "validFrom": "", "validTo": "", "stateLevel": null, "couponValue": 0,
                "customProperties": [], "images": [], "i18nFields": {},
                "activation": {"activatable": false, "activated": null, "lastActivationDate": null}
            });
            if let Some(def) = defaults.as_object() {
                full.extend(def.clone());
            }
            full.extend(o.clone());
            d.coupons.push(Value::Object(full));
        }
        d.index();
        Ok(d)
    }

    /// Builds the lookup maps over the seeded data (the first match wins, as a scan would).
    fn index(&mut self) {
        for (i, a) in self.accounts.iter().enumerate() {
            if a.status != "ACTIVE" {
                self.inactive.insert(a.id.clone());
            }
            if a.status == "DELETED" {
                continue;
            }
            for (t, v) in [
                ("ID", &a.id),
                ("CARDCODE", &a.card_code),
                ("APPCODE", &a.app_code),
                ("EXTERNALCODE", &a.external_code),
            ] {
                if !v.is_empty() {
                    self.account_index.entry((t, v.clone())).or_insert(i);
                }
            }
        }
        for (i, u) in self.users.iter().enumerate() {
            self.user_index.entry(text(u, "userId")).or_insert(i);
        }
        for (i, c) in self.coupons.iter().enumerate() {
            self.coupon_index
                .entry(text(c, "accountCouponId"))
                .or_insert(i);
            self.coupons_of_account
                .entry(text(c, "accountId"))
                .or_default()
                .push(i);
            let coupon_id = text(c, "couponId");
            if !coupon_id.is_empty() {
                self.coupons_of_coupon.entry(coupon_id).or_default().push(i);
            }
        }
    }

    /// Keeps the signing key and token generation of `old` (a new seed does not log out).
    pub fn with_tokens_of(mut self, old: &Data) -> Data {
        self.secret = if old.secret == [0; 32] {
            rand::random()
        } else {
            old.secret
        };
        self.generation = old.generation;
        self
    }

    /// The `expire_tokens` switch: every token issued so far is refused from now on.
    pub fn expire_tokens(&mut self) {
        self.generation += 1;
    }

    /// The seeded data as it is now; with generated data, its shape and only the generated
    /// account coupons that writes changed (listing millions would help no one).
    pub fn to_json(&self) -> Value {
        let mut coupons = self.coupons.clone();
        let mut v = json!({
            "accounts": self.accounts.iter().map(|a| json!({
                "id": a.id, "program": a.program, "status": a.status, "cardCode": a.card_code,
                "appCode": a.app_code, "externalCode": a.external_code, "memberships": a.memberships,
            })).collect::<Vec<_>>(),
            "users": self.users,
        });
        if let Some(g) = &self.generated {
            coupons.extend(g.changed());
            v["generated"] = g.to_json();
        }
        v["accountCoupons"] = Value::Array(coupons);
        v
    }

    fn sign(&self, data: &str) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.secret);
        URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, data.as_bytes()).as_ref())
    }

    /// A JWT (HS256) with `sub`, `org`, `iat`, `exp` and the sim's token generation `gen`.
    fn issue(&self, sub: &str, org: &str, ttl: i64) -> String {
        let now = chrono::Utc::now().timestamp();
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims =
            json!({"sub": sub, "org": org, "iat": now, "exp": now + ttl, "gen": self.generation});
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing = format!("{header}.{payload}");
        let sig = self.sign(&signing);
        format!("{signing}.{sig}")
    }

    fn token_ok(&self, token: &str) -> bool {
        let mut parts = token.rsplitn(2, '.');
        let (Some(sig), Some(signing)) = (parts.next(), parts.next()) else {
            return false;
        };
        let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
            return false;
        };
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.secret);
        if ring::hmac::verify(&key, signing.as_bytes(), &sig).is_err() {
            return false;
        }
        let claims = signing
            .split('.')
            .nth(1)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        let Some(claims) = claims else { return false };
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        let gen = claims
            .get("gen")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        exp > chrono::Utc::now().timestamp() && gen == self.generation
    }

    /// The account with this identifier: `(id, status, memberships)`; DELETED ones are not
    /// found.
    fn account(&self, id: &str, id_type: &str) -> Option<(String, String, String, Value)> {
        if let Some(a) = self
            .account_index
            .get(&(id_type_key(id_type)?, id.to_owned()))
            .map(|i| &self.accounts[*i])
        {
            return Some((
                a.id.clone(),
                a.program.clone(),
                a.status.clone(),
                Value::Array(a.memberships.clone()),
            ));
        }
        let n = self.generated.as_ref()?.account_number(id, id_type)?;
        Some((
            Generated::account_id(n),
            "Pgr-A".to_owned(),
            Generated::status(n).to_owned(),
            Generated::memberships(n),
        ))
    }

    fn user(&self, id: &str) -> Option<Value> {
        if let Some(i) = self.user_index.get(id) {
            return Some(self.users[*i].clone());
        }
        let g = self.generated.as_ref()?;
        g.user_number(id).map(Generated::user)
    }

    /// Every account coupon of the account with this (internal) id.
    fn coupons_of(&self, account_id: &str) -> Vec<Value> {
        let mut out: Vec<Value> = self
            .coupons_of_account
            .get(account_id)
            .into_iter()
            .flatten()
            .map(|i| self.coupons[*i].clone())
            .collect();
        if let Some(g) = &self.generated {
            if let Some(n) = g.account_number(account_id, "ID") {
                out.extend(g.coupons_of(n));
            }
        }
        out
    }

    fn find_coupon(&self, id: &str) -> Option<Slot> {
        if let Some(i) = self.coupon_index.get(id) {
            return Some(Slot::Seeded(*i));
        }
        self.generated
            .as_ref()?
            .account_coupon_number(id)
            .map(|_| Slot::Generated)
    }

    fn coupon(&self, slot: Slot, id: &str) -> Option<Value> {
        match slot {
            Slot::Seeded(i) => Some(self.coupons[i].clone()),
            Slot::Generated => self.generated.as_ref()?.coupon(id),
        }
    }

    fn coupon_mut(&mut self, slot: Slot, id: &str) -> Option<&mut Value> {
        match slot {
            Slot::Seeded(i) => self.coupons.get_mut(i),
            Slot::Generated => self.generated.as_mut()?.coupon_mut(id),
        }
    }

    /// Whether an account coupon's account can be used (no account with its id is locked).
    fn account_usable(&self, account_id: &str) -> bool {
        if self.inactive.contains(account_id) {
            return false;
        }
        match self
            .generated
            .as_ref()
            .and_then(|g| g.account_number(account_id, "ID"))
        {
            Some(n) => Generated::status(n) == "ACTIVE",
            None => true,
        }
    }

    /// One more redemption of `coupon_id` on every account's copy (`redeemCountGlobal`).
    fn count_global(&mut self, coupon_id: &str) {
        for i in self.coupons_of_coupon.get(coupon_id).into_iter().flatten() {
            bump(&mut self.coupons[*i], "redeemCountGlobal");
        }
        if let Some(g) = &mut self.generated {
            if let Some(c) = g.catalog_number(coupon_id) {
                g.count_global(c);
            }
        }
    }
}

/// The index key of an `id-type` (None for types accounts are not found by).
fn id_type_key(id_type: &str) -> Option<&'static str> {
    ["ID", "CARDCODE", "APPCODE", "EXTERNALCODE"]
        .into_iter()
        .find(|t| *t == id_type)
}

/// Adds one to an integer field of an object.
fn bump(v: &mut Value, key: &str) {
    if let Some(o) = v.as_object_mut() {
        let n = o.get(key).and_then(Value::as_i64).unwrap_or(0);
        o.insert(key.into(), json!(n + 1));
    }
}

pub fn default_seed() -> Value {
    let account = "9f1c2e4a-0000-4000-8000-000000000001";
    let user = "5b7d9e11-0000-4000-8000-000000000001";
    json!({
        "accounts": [{
            "id": account, "program": "Pgr-A", "status": "ACTIVE",
            "cardCode": "4000000000001", "appCode": "A1B2C3D4E5", "externalCode": "LOY-4000000000001",
            "memberships": [{
                "memberRole": "OWNER", "membershipId": "3c4d5e6f-0000-4000-8000-000000000001",
                "optins": [{"type": "email", "flag": true}],
                "partnerId": "8e8e8e8e-0000-4000-8000-000000000001", "userId": user
            }]
        }],
        "users": [{
            "userId": user, "givenName": "Jane", "familyName": "Doe", "emailAddress": "jane@example.com",
            "phone": 5551234567u64, "zipCode": 60601, "city": "Chicago", "countryCode": "US",
            "birthDate": "1980-01-01", "genderCode": "FEMALE", "streetHouseNo": "1 Main St",
            "customProperties": []
        }],
        "accountCoupons": [
            {
                "accountCouponId": "QUNDT1VOVENPVVBPTi0wMDAxLWNvZmZlZS0xNS1wZXJjZW50",
                "accountId": account, "couponId": "c0c0c0c0-0000-4000-8000-000000000001",
                "usageType": "DISCOUNT", "externalReference": "EXT-COFFEE-15",
                "externalCode": {"value": "EXT-COFFEE-15", "type": "TEXT"},
                "maxRedeemCount": 1, "maxRedeemCountGlobal": 1000,
                "couponValue": 15, "validFrom": "2026-01-01T00:00:00", "validTo": "2099-12-31T23:59:00",
                "i18nFields": {"en": {"title": "15% Off Coffee", "subTitle": "Roastery",
                    "description": "Buy any coffee.", "bookingText": "Coffee 15%"}},
                "activation": {"activatable": true, "activated": true, "lastActivationDate": "2026-01-02T10:00:00"}
            },
            {
                "accountCouponId": "QUNDT1VOVENPVVBPTi0wMDAy",
                "accountId": account, "couponId": "c0c0c0c0-0000-4000-8000-000000000002",
                "usageType": "REWARD", "externalReference": "EXT-FREE-COFFEE",
                "maxRedeemCount": 1, "couponValue": 350,
                "validFrom": "2026-01-01T00:00:00", "validTo": "2099-12-31T23:59:00",
                "i18nFields": {"en": {"title": "Free coffee", "subTitle": "", "description": "", "bookingText": "Free coffee"}}
            }
        ]
    })
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/login", web::post().to(login))
        .route(
            "/realms/{realm}/protocol/openid-connect/token",
            web::post().to(oauth_token),
        )
        .route("/search", web::post().to(search))
        .route("/accounts/{id}", web::get().to(get_account))
        .route("/accounts/{id}/memberships", web::get().to(memberships))
        .route("/users/{id}", web::get().to(get_user))
        .route(
            "/v2/accounts/{id}/accountcoupons",
            web::get().to(list_coupons),
        )
        .route("/v2/accountcoupons/{id}", web::get().to(get_coupon))
        .route(
            "/v2/accountcoupons/{id}/activation",
            web::patch().to(activation),
        )
        .route("/v2/accountcoupons/{id}", web::patch().to(redeem))
        .route("/v3/accountcoupons/{id}", web::patch().to(redeem));
}

fn error(status: u16, code: &str, detail: &[&str]) -> Reply {
    Reply::json(status, json!({"code": code, "detail": detail}))
}

/// Authorization (raw token or `Bearer <token>`), then `interaction-id`, then `id-type`
/// when `need_id_type`.
fn check(d: &SimData, req: &HttpRequest, need_id_type: bool) -> Result<String, Reply> {
    let auth = header(req, "authorization").unwrap_or_default();
    let token = auth.strip_prefix("Bearer ").unwrap_or(auth).trim();
    if token.is_empty() || !d.convercus.token_ok(token) {
        return Err(error(
            401,
            "UNAUTHORIZED",
            &["missing, invalid or expired token"],
        ));
    }
    if header(req, "interaction-id").is_none_or(str::is_empty) {
        return Err(error(400, "MISSING_HEADER", &["interaction-id"]));
    }
    let id_type = header(req, "id-type").unwrap_or_default();
    match id_type {
        "ID" | "CARDCODE" | "APPCODE" | "EXTERNALCODE" | "PROMOCODE" => Ok(id_type.to_owned()),
        "" if !need_id_type => Ok("ID".to_owned()),
        "" => Err(error(400, "MISSING_HEADER", &["id-type"])),
        _ => Err(error(400, "INVALID_HEADER", &["id-type"])),
    }
}

fn path_id(req: &HttpRequest) -> String {
    req.match_info().get("id").unwrap_or_default().to_owned()
}

async fn login(st: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    dispatch(&st, P, &req, &body, None, |d, _, body| {
        let Some(v) = json_body(body) else {
            return error(
                400,
                "BAD_REQUEST",
                &["body must be JSON {org, userName, password}"],
            );
        };
        let c = &d.config;
        if text(&v, "org") != c.convercus_org
            || text(&v, "userName") != c.convercus_user
            || text(&v, "password") != c.convercus_password
        {
            return error(401, "UNAUTHORIZED", &["bad credentials"]);
        }
        let token = d
            .convercus
            .issue(&c.convercus_user, &c.convercus_org, c.token_ttl_secs);
        Reply::json(200, json!({"token": token}))
    })
    .await
}

async fn oauth_token(st: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    dispatch(&st, P, &req, &body, None, |d, _, body| {
        let form = super::query_pairs(&String::from_utf8_lossy(body));
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        let c = &d.config;
        let ok = match get("grant_type").as_str() {
            "client_credentials" => get("client_id") == "machine-2-machine" && get("client_secret") == c.convercus_client_secret,
            "password" => get("username") == c.convercus_user && get("password") == c.convercus_password,
            // Keycloak: a refresh token it issued, not lapsed or revoked, with the client.
            "refresh_token" => {
                if !(get("client_id") == "machine-2-machine" && get("client_secret") == c.convercus_client_secret) {
                    return Reply::json(401, json!({"error": "invalid_client"}));
                }
                if !d.convercus.token_ok(&get("refresh_token")) {
                    return Reply::json(400, json!({"error": "invalid_grant", "error_description": "Invalid refresh token"}));
                }
                true
            }
            _ => return Reply::json(400, json!({"error": "unsupported_grant_type"})),
        };
        // Keycloak's answers: a bad user or password is 400 invalid_grant, a bad client 401.
        if !ok && get("grant_type") == "password" {
            return Reply::json(400, json!({"error": "invalid_grant", "error_description": "Invalid user credentials"}));
        }
        if !ok {
            return Reply::json(401, json!({"error": "invalid_client", "error_description": "Invalid client or Invalid client credentials"}));
        }
        let token = d.convercus.issue("service-account-machine-2-machine", &c.convercus_org, c.token_ttl_secs);
        let refresh = d.convercus.issue("refresh-machine-2-machine", &c.convercus_org, c.token_ttl_secs.saturating_mul(10));
        Reply::json(200, json!({"access_token": token, "expires_in": c.token_ttl_secs, "refresh_token": refresh,
                                "refresh_expires_in": c.token_ttl_secs.saturating_mul(10), "token_type": "Bearer", "scope": "openid"}))
    })
    .await
}

async fn search(st: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    dispatch(&st, P, &req, &body, None, |d, req, body| {
        if let Err(r) = check(d, req, false) {
            return r;
        }
        let Some(v) = json_body(body) else {
            return error(400, "BAD_REQUEST", &["body must be JSON"]);
        };
        let term = text(&v, "searchTerm").to_lowercase();
        let words: Vec<&str> = term.split_whitespace().collect();
        if words.is_empty() {
            return error(400, "BAD_REQUEST", &["searchTerm"]);
        }
        let c = &d.convercus;
        let mut hits = Vec::new();
        for a in &c.accounts {
            let user = a.memberships.iter().filter_map(|m| m.get("userId").and_then(Value::as_str))
                .find_map(|uid| c.user_index.get(uid).map(|i| &c.users[*i]));
            let mut fields = vec![a.card_code.clone(), a.app_code.clone(), a.external_code.clone(), a.id.clone()];
            if let Some(u) = user {
                for k in ["givenName", "familyName", "city", "zipCode", "emailAddress", "birthDate"] {
                    fields.push(match u.get(k) { Some(Value::String(x)) => x.clone(), Some(Value::Null) | None => String::new(), Some(x) => x.to_string() });
                }
            }
            let fields: Vec<String> = fields.into_iter().map(|f| f.to_lowercase()).collect();
            if words.iter().all(|w| fields.iter().any(|f| f == w)) {
                let preview = user.map(|u| format!("name: {} {},email: {}", text(u, "givenName"), text(u, "familyName"), text(u, "emailAddress"))).unwrap_or_default();
                hits.push(json!({"preview": preview, "refId": a.id, "type": "ACCOUNT"}));
            }
        }
        // Generated accounts are found by an identifier or e-mail address (a word that
        // names one account), not by the names they all share.
        if let Some(g) = &c.generated {
            let mut found: Vec<u64> = words
                .iter()
                .filter_map(|w| {
                    let upper = w.to_uppercase();
                    ["CARDCODE", "APPCODE", "EXTERNALCODE", "ID"]
                        .into_iter()
                        .find_map(|t| g.account_number(&upper, t).or_else(|| g.account_number(w, t)))
                        .or_else(|| w.strip_prefix("gen")?.strip_suffix("@example.com")?.parse().ok().filter(|n| *n < g.accounts))
                })
                .collect();
            found.sort_unstable();
            found.dedup();
            for n in found {
                let ids = Generated::identifiers(n);
                if words.iter().all(|w| ids.iter().any(|f| f == w)) {
                    let preview = format!("name: Gen Customer{n},email: gen{n}@example.com");
                    hits.push(json!({"preview": preview, "refId": Generated::account_id(n), "type": "ACCOUNT"}));
                }
            }
        }
        Reply::json(200, json!({"searchTerm": text(&v, "searchTerm"), "nrOfResults": hits.len(), "results": {"ACCOUNT": hits}}))
    })
    .await
}

async fn get_account(st: web::Data<State>, req: HttpRequest) -> HttpResponse {
    dispatch(&st, P, &req, &[], None, |d, req, _| {
        let id_type = match check(d, req, true) {
            Ok(t) => t,
            Err(r) => return r,
        };
        if d.rejected(P, &path_id(req)) {
            return error(
                400,
                "ACCOUNT_LOCKED",
                &["rejected by the simulator's reject switch"],
            );
        }
        match d.convercus.account(&path_id(req), &id_type) {
            Some((id, program, status, _)) => {
                Reply::json(200, json!({"id": id, "program": program, "status": status}))
            }
            None => error(404, "ACCOUNT_NOT_FOUND", &[]),
        }
    })
    .await
}

async fn memberships(st: web::Data<State>, req: HttpRequest) -> HttpResponse {
    dispatch(&st, P, &req, &[], None, |d, req, _| {
        let id_type = match check(d, req, true) {
            Ok(t) => t,
            Err(r) => return r,
        };
        match d.convercus.account(&path_id(req), &id_type) {
            Some((_, _, _, memberships)) => Reply::json(200, memberships),
            None => error(404, "ACCOUNT_NOT_FOUND", &[]),
        }
    })
    .await
}

async fn get_user(st: web::Data<State>, req: HttpRequest) -> HttpResponse {
    dispatch(&st, P, &req, &[], None, |d, req, _| {
        if let Err(r) = check(d, req, false) {
            return r;
        }
        match d.convercus.user(&path_id(req)) {
            Some(u) => Reply::json(200, u),
            None => error(404, "USER_NOT_FOUND", &[]),
        }
    })
    .await
}

async fn list_coupons(st: web::Data<State>, req: HttpRequest) -> HttpResponse {
    dispatch(&st, P, &req, &[], None, |d, req, _| {
        let id_type = match check(d, req, true) {
            Ok(t) => t,
            Err(r) => return r,
        };
        let Some((account_id, ..)) = d.convercus.account(&path_id(req), &id_type) else {
            return error(404, "ACCOUNT_NOT_FOUND", &[]);
        };
        Reply::json(200, Value::Array(d.convercus.coupons_of(&account_id)))
    })
    .await
}

async fn get_coupon(st: web::Data<State>, req: HttpRequest) -> HttpResponse {
    dispatch(&st, P, &req, &[], None, |d, req, _| {
        if let Err(r) = check(d, req, false) {
            return r;
        }
        let id = path_id(req);
        let c = &d.convercus;
        match c.find_coupon(&id).and_then(|slot| c.coupon(slot, &id)) {
            Some(c) => Reply::json(200, c),
            None => error(404, "COUPON_NOT_FOUND", &[]),
        }
    })
    .await
}

fn record(d: &mut SimData, op: &str, key: &str, reply: &Reply, applied: bool, body: &[u8]) {
    let outcome = reply
        .body
        .as_ref()
        .and_then(|b| b.get("code"))
        .and_then(Value::as_str)
        .unwrap_or("ok")
        .to_owned();
    d.ledger.record(
        P.name(),
        op,
        key,
        reply.status,
        &outcome,
        applied,
        ledger_body(body),
    );
}

async fn activation(st: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let key = path_id(&req);
    dispatch(
        &st,
        P,
        &req,
        &body,
        Some(("activation", vec![key.clone()])),
        |d, req, body| {
            let reply = activate(d, req, body, &key);
            let applied = reply.status < 300;
            record(d, "activation", &key, &reply, applied, body);
            reply
        },
    )
    .await
}

fn activate(d: &mut SimData, req: &HttpRequest, body: &[u8], key: &str) -> Reply {
    if let Err(r) = check(d, req, false) {
        return r;
    }
    let Some(flag) = json_body(body).and_then(|v| v.get("activated").and_then(Value::as_bool))
    else {
        return error(
            400,
            "BAD_REQUEST",
            &["body must be {\"activated\": true|false}"],
        );
    };
    if d.rejected(P, key) {
        return error(
            400,
            "COUPON_NOT_ASSIGNED_ACCOUNT",
            &["rejected by the simulator's reject switch"],
        );
    }
    let c = &mut d.convercus;
    let Some(slot) = c.find_coupon(key) else {
        return error(404, "COUPON_NOT_FOUND", &[]);
    };
    let account = c
        .coupon(slot, key)
        .map(|x| text(&x, "accountId"))
        .unwrap_or_default();
    if !c.account_usable(&account) {
        return error(400, "ACCOUNT_LOCKED", &[]);
    }
    let Some(coupon) = c.coupon_mut(slot, key) else {
        return error(404, "COUPON_NOT_FOUND", &[]);
    };
    let activatable = coupon
        .pointer("/activation/activatable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if !activatable {
        return error(400, "COUPON_NOT_ACTIVATABLE", &[]);
    }
    if let Some(a) = coupon.get_mut("activation").and_then(Value::as_object_mut) {
        a.insert("activated".into(), json!(flag));
        if flag {
            let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string();
            a.insert("lastActivationDate".into(), json!(now));
        }
    }
    Reply::empty(204)
}

async fn redeem(st: web::Data<State>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let key = path_id(&req);
    dispatch(
        &st,
        P,
        &req,
        &body,
        Some(("redemption", vec![key.clone()])),
        |d, req, body| {
            let reply = redeem_one(d, req, &key);
            let applied = reply.status < 300;
            record(d, "redemption", &key, &reply, applied, body);
            reply
        },
    )
    .await
}

fn redeem_one(d: &mut SimData, req: &HttpRequest, key: &str) -> Reply {
    let id_type = match check(d, req, false) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if id_type == "PROMOCODE" {
        return error(404, "PROMOCODE_NOT_FOUND", &[]);
    }
    if d.rejected(P, key) {
        return error(
            400,
            "COUPON_NOT_ASSIGNED_ACCOUNT",
            &["rejected by the simulator's reject switch"],
        );
    }
    let interaction = header(req, "interaction-id").unwrap_or_default().to_owned();
    let c = &mut d.convercus;
    let Some((slot, coupon)) = c
        .find_coupon(key)
        .and_then(|slot| Some((slot, c.coupon(slot, key)?)))
    else {
        return error(404, "COUPON_NOT_FOUND", &[]);
    };
    let account = text(&coupon, "accountId");
    if !c.account_usable(&account) {
        return error(400, "ACCOUNT_LOCKED", &[]);
    }
    let usage = text(&coupon, "usageType");
    if usage == "EXTRAPOINT" || usage == "MULTIPLIER" {
        return error(400, "COUPON_NOT_MANUAL_REDEEMABLE", &[]);
    }
    let activatable = coupon
        .pointer("/activation/activatable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let activated = coupon
        .pointer("/activation/activated")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if activatable && !activated {
        return error(
            400,
            "COUPON_NOT_ACTIVATABLE",
            &["not activated by the account"],
        );
    }
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string();
    let from = text(&coupon, "validFrom");
    let to = text(&coupon, "validTo");
    let mut failed = Vec::new();
    if !from.is_empty() && now < from {
        failed.push("NOT_YET_REDEEMABLE");
    }
    if !to.is_empty() && now > to {
        failed.push("NO_LONGER_REDEEMABLE");
    }
    let n = |k: &str| coupon.get(k).and_then(Value::as_i64);
    if let (Some(max), Some(count)) = (n("maxRedeemCountGlobal"), n("redeemCountGlobal")) {
        if count >= max {
            failed.push("NO_MORE_REDEEM_BY_PROGRAM");
        }
    }
    if let (Some(max), Some(count)) = (n("maxRedeemCount"), n("redeemCount")) {
        if count >= max {
            failed.push("NO_MORE_REDEEM_BY_ACCOUNT");
        }
    }
    let points: Vec<String> = items(&coupon, "pointsOfRedemption")
        .filter(|p| text(p, "unitType") == "INTERACTIONPOINT")
        .map(|p| text(p, "value"))
        .collect();
    if !points.is_empty() && !points.contains(&interaction) {
        failed.push("WRONG_INTERACTION_POINT");
    }
    if !failed.is_empty() {
        return error(400, "CONDITION_NOT_FULFILLED", &failed);
    }
    let coupon_id = text(&coupon, "couponId");
    if let Some(x) = c.coupon_mut(slot, key) {
        bump(x, "redeemCount");
        if coupon_id.is_empty() {
            bump(x, "redeemCountGlobal");
        }
    }
    if !coupon_id.is_empty() {
        c.count_global(&coupon_id);
    }
    Reply::empty(204)
}
