//! Promise 7: bad input gets a clear 4xx with CATAPULT's error object, never a 500 or a
//! panic, and the server answers normally afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::{Store, StoreOptions, PASSWORD, SITE, USER};
use serde_json::Value;

const JANE: &str = "4000000000001";

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    body: Vec<u8>,
    auth: Option<(&'static str, &'static str)>,
    status: u16,
    error: &'static str,
}

fn case(
    what: &'static str,
    method: &'static str,
    path: String,
    body: impl Into<Vec<u8>>,
    status: u16,
    error: &'static str,
) -> Case {
    Case {
        what,
        method,
        path,
        body: body.into(),
        auth: Some((USER, PASSWORD)),
        status,
        error,
    }
}

#[tokio::test]
async fn bad_requests_get_4xx_error_objects() {
    let store = Store::start(StoreOptions::default()).await.unwrap();
    let txn_q = format!("?site={SITE}&customer={JANE}&transaction=BAD1");
    let mut big = b"{\"items\":[".to_vec();
    while big.len() < 5 * 1024 * 1024 {
        big.extend_from_slice(b"{\"id\":1,\"quantity\":1,\"upc\":1,\"price\":1.00},");
    }
    big.extend_from_slice(b"{\"id\":1}]}");
    let cases = vec![
        case(
            "malformed JSON",
            "POST",
            format!("/transaction{txn_q}"),
            "{\"items\": [",
            400,
            "INVALID_REQUEST",
        ),
        case(
            "a JSON array instead of an object",
            "POST",
            format!("/transaction{txn_q}"),
            "[1,2]",
            400,
            "INVALID_REQUEST",
        ),
        case(
            "items is a string",
            "POST",
            format!("/transaction{txn_q}"),
            r#"{"items":"lots"}"#,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "quantity is a string of letters",
            "POST",
            format!("/transaction{txn_q}"),
            r#"{"items":[{"id":1,"quantity":"two"}]}"#,
            400,
            "INVALID_REQUEST",
        ),
        // §5.7/§5.8/§5.11 type amounts and quantities as JSON numbers: digits in a string
        // are a wrong type too.
        case(
            "quantity is a string of digits",
            "POST",
            format!("/transaction{txn_q}"),
            r#"{"items":[{"id":1,"quantity":"1","upc":38000012345,"price":4.49}]}"#,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "price is a string of digits",
            "POST",
            format!("/transaction{txn_q}"),
            r#"{"items":[{"id":1,"quantity":1,"upc":38000012345,"price":"4.49"}]}"#,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "subTotal is a string of digits",
            "POST",
            format!("/transaction{txn_q}"),
            r#"{"items":[],"subTotal":"4.49"}"#,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "a tender amount is a string of digits",
            "POST",
            format!("/transaction/commit{txn_q}"),
            r#"{"coupons":[],"tenders":[{"type":"CASH","amount":"5.00"}]}"#,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "moneySpent is a string of digits",
            "POST",
            "/vouchers/VOUCHER-0001/validate".to_owned(),
            format!(r#"{{"site":"{SITE}","transaction":"BAD1","moneySpent":"12.50"}}"#),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "line id is not an integer",
            "POST",
            format!("/transaction{txn_q}"),
            r#"{"items":[{"id":"x"}]}"#,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "price out of range",
            "POST",
            format!("/transaction{txn_q}"),
            r#"{"items":[{"id":1,"price":1e300}]}"#,
            400,
            "INVALID_REQUEST",
        ),
        // Valid JSON numbers too large for an amount: rust_decimal's `*` panicked on them
        // (the lane's connection dropped) before amounts were bounded.
        case(
            "price of 1e27",
            "POST",
            format!("/transaction{txn_q}"),
            r#"{"items":[{"id":1,"price":1e27}]}"#,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "quantity of 1e26",
            "POST",
            format!("/transaction{txn_q}"),
            r#"{"items":[{"id":1,"price":1.0,"quantity":1e26}]}"#,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "price near the largest 64-bit cents on a weighed line",
            "POST",
            format!("/transaction{txn_q}"),
            r#"{"items":[{"id":1,"price":92233720368547758,"quantity":0.5}]}"#,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "tender amount of 1e28",
            "POST",
            format!("/transaction/commit{txn_q}"),
            r#"{"coupons":[],"tenders":[{"type":"CASH","amount":1e28}]}"#,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "voucher money spent of 1e28",
            "POST",
            "/vouchers/CT-SESSION-0001/validate".to_owned(),
            r#"{"site":"STO1","transaction":"X","moneySpent":1e28}"#,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "an update without a body",
            "POST",
            format!("/transaction{txn_q}"),
            "",
            400,
            "INVALID_REQUEST",
        ),
        // An empty body is not an empty coupon list: that would redeem every pending
        // coupon (CATAPULT §6.1).
        case(
            "a commit without a body",
            "POST",
            format!("/transaction/commit{txn_q}"),
            " ",
            400,
            "INVALID_REQUEST",
        ),
        case(
            "transientRequest is a number",
            "POST",
            format!("/transaction{txn_q}"),
            r#"{"transientRequest":3}"#,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "invalid UTF-8 in the body",
            "POST",
            format!("/transaction{txn_q}"),
            b"{\"customer\":\"\xff\xfe\"}".to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "a 5 MB body",
            "POST",
            format!("/transaction{txn_q}"),
            big,
            413,
            "INVALID_REQUEST",
        ),
        case(
            "customer id over 16 characters",
            "GET",
            format!("/coupons/customer?site={SITE}&customer=12345678901234567"),
            "",
            400,
            "INVALID_CUSTOMER",
        ),
        case(
            "missing customer",
            "GET",
            format!("/coupons/customer?site={SITE}"),
            "",
            400,
            "INVALID_CUSTOMER",
        ),
        case(
            "unknown site",
            "GET",
            "/coupons?site=ELSEWHERE".to_owned(),
            "",
            400,
            "INVALID_SITE",
        ),
        case(
            "missing site",
            "GET",
            "/coupons".to_owned(),
            "",
            400,
            "INVALID_SITE",
        ),
        case(
            "transaction id over 64 characters",
            "POST",
            format!(
                "/transaction?site={SITE}&customer={JANE}&transaction={}",
                "T".repeat(65)
            ),
            "{}",
            400,
            "INVALID_TRANSACTION",
        ),
        case(
            "missing transaction",
            "POST",
            format!("/transaction/commit?site={SITE}&customer={JANE}"),
            "{}",
            400,
            "INVALID_TRANSACTION",
        ),
        case(
            "clip id over 16 characters",
            "POST",
            format!("/coupons/customer?site={SITE}&customer={JANE}"),
            r#"{"add":["12345678901234567"]}"#,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "commit id over 15 characters",
            "POST",
            format!("/transaction/commit{txn_q}"),
            r#"{"coupons":["1234567890123456"]}"#,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "coupons is not a list",
            "POST",
            format!("/transaction/commit{txn_q}"),
            r#"{"coupons":"BOGO1"}"#,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "control character in customer id",
            "GET",
            format!("/coupons/customer?site={SITE}&customer=a%00b"),
            "",
            400,
            "INVALID_CUSTOMER",
        ),
        case(
            "invalid UTF-8 in the query",
            "GET",
            format!("/coupons/customer?site={SITE}&customer=%FF%FE"),
            "",
            400,
            "INVALID_REQUEST",
        ),
        case(
            "invalid UTF-8 in a commit's transaction id",
            "POST",
            format!("/transaction/commit?site={SITE}&customer=4000000000001&transaction=T%C3%28"),
            r#"{"coupons":[]}"#,
            400,
            "INVALID_REQUEST",
        ),
        case(
            "voucher money spent negative",
            "POST",
            "/vouchers/CT-SESSION-0001/validate".to_owned(),
            r#"{"site":"STO1","transaction":"X","moneySpent":-1}"#,
            400,
            "INVALID_REQUEST",
        ),
        Case {
            auth: None,
            ..case(
                "missing basic auth",
                "GET",
                format!("/coupons?site={SITE}"),
                "",
                401,
                "UNAUTHORIZED",
            )
        },
        Case {
            auth: Some((USER, "wrong")),
            ..case(
                "wrong password",
                "GET",
                format!("/coupons?site={SITE}"),
                "",
                401,
                "UNAUTHORIZED",
            )
        },
        case(
            "an update of more than 1,000 items",
            "POST",
            format!("/transaction{txn_q}"),
            serde_json::json!({"transientRequest": true, "items": (0..1001).map(|i| serde_json::json!({"id": i, "quantity": 1, "upc": 1, "price": 1.0})).collect::<Vec<_>>()}).to_string(),
            400,
            "INVALID_REQUEST",
        ),
        case(
            "a commit listing more than 500 coupon ids",
            "POST",
            format!("/transaction/commit{txn_q}"),
            serde_json::json!({"coupons": (0..501).map(|i| format!("C{i}")).collect::<Vec<_>>()}).to_string(),
            400,
            "INVALID_REQUEST",
        ),
        // Image paths are served without credentials, but a lane API path ending in an
        // image type is not an image: it was looked up (and read through) without them.
        Case {
            auth: None,
            ..case(
                "voucher look-up named like an image, without credentials",
                "GET",
                format!("/vouchers/X1.jpg?site={SITE}"),
                "",
                401,
                "UNAUTHORIZED",
            )
        },
        Case {
            auth: Some(("nobody", PASSWORD)),
            ..case(
                "wrong user",
                "POST",
                format!("/transaction/commit{txn_q}"),
                "{}",
                401,
                "UNAUTHORIZED",
            )
        },
    ];
    for c in cases {
        let mut req = store
            .client
            .request(c.method.parse().unwrap(), store.url(&c.path))
            .header("content-type", "application/json")
            .body(c.body);
        if let Some((u, p)) = c.auth {
            req = req.basic_auth(u, Some(p));
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: request failed: {e}", c.what));
        let status = r.status().as_u16();
        let www = r.headers().get("www-authenticate").cloned();
        let text = r.text().await.unwrap();
        assert_eq!(status, c.status, "{}: {text}", c.what);
        if c.status == 200 {
            continue;
        }
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {text}", c.what));
        assert_eq!(v["errors"][0]["id"], c.error, "{}: {text}", c.what);
        assert!(
            v["errors"][0]["details"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{}: details say what is wrong",
            c.what
        );
        if status == 401 {
            assert!(
                www.is_some_and(|h| h.to_str().unwrap_or("").starts_with("Basic")),
                "{}: 401 carries WWW-Authenticate",
                c.what
            );
        }
    }
    // Still healthy and answering normally.
    let (status, m) = store
        .get(&format!("/coupons/customer?site={SITE}&customer={JANE}"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(m["clipped"].as_array().is_some_and(|l| !l.is_empty()));
    assert!(
        !store.log().contains("panicked"),
        "no panic in the server log"
    );
}
