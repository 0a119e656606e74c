//! Provider coupon images, cached where the edge server serves them (`server.image_dir`,
//! `/images/<file>`). CATAPULT §8: with `useExternalImages=false` (the POS default) the POS
//! fetches base URL + `imageUrl`, so a provider's absolute image URL cannot be advertised;
//! and the WAN may be down when a lane wants the picture. Only JPEG, PNG and GIF of at most
//! 1 MB are kept (the types ECRS accepts), fetched without following redirects.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest image kept, bytes.
pub const MAX_BYTES: usize = 1024 * 1024;

/// One pull's image cache: each URL is fetched at most once per pull, and never again once
/// its file exists.
pub struct Images {
    dir: PathBuf,
    http: reqwest::Client,
    seen: HashMap<String, Option<String>>,
    failed: usize,
}

impl Images {
    pub fn new(dir: &Path, timeout_ms: u64) -> Images {
        crate::http::install_crypto();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("edge-coupon-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|e| {
                log::error!("cannot build the image HTTP client ({e}); using defaults");
                reqwest::Client::new()
            });
        Images {
            dir: dir.to_owned(),
            http,
            seen: HashMap::new(),
            failed: 0,
        }
    }

    /// Images that could not be cached in this pull.
    pub fn failed(&self) -> usize {
        self.failed
    }

    /// The path the edge server serves `url` at (`/images/<file>`), downloading it when it
    /// is not cached yet; `None` when it cannot be had (then no image is advertised). A
    /// path that is already local is kept.
    pub async fn local(&mut self, url: &str) -> Option<String> {
        if url.starts_with('/') {
            return Some(url.to_owned());
        }
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return None;
        }
        if let Some(known) = self.seen.get(url) {
            return known.clone();
        }
        let stem = stem(url);
        let cached = ["jpg", "png", "gif"]
            .iter()
            .map(|ext| format!("{stem}.{ext}"))
            .find(|name| self.dir.join(name).is_file());
        let found = match cached {
            Some(name) => Some(format!("/images/{name}")),
            None => match self.fetch(url, &stem).await {
                Ok(name) => Some(format!("/images/{name}")),
                Err(why) => {
                    self.failed += 1;
                    log::warn!("coupon image not cached ({why}): it is not advertised to the lanes until a later pull gets it");
                    None
                }
            },
        };
        self.seen.insert(url.to_owned(), found.clone());
        found
    }

    async fn fetch(&self, url: &str, stem: &str) -> Result<String, String> {
        let mut resp = self
            .http
            .get(url)
            .header("Accept", "image/jpeg, image/png, image/gif")
            .send()
            .await
            .map_err(|e| format!("cannot fetch {}: {e}", host_of(url)))?;
        if !resp.status().is_success() {
            return Err(format!("{} answered {}", host_of(url), resp.status()));
        }
        let ext = match resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .as_deref()
        {
            Some("image/jpeg") => "jpg",
            Some("image/png") => "png",
            Some("image/gif") => "gif",
            other => {
                return Err(format!(
                    "{} sent {}, not JPEG, PNG or GIF",
                    host_of(url),
                    other.unwrap_or("no content type")
                ))
            }
        };
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("cannot read the image from {}: {e}", host_of(url)))?
        {
            if body.len() + chunk.len() > MAX_BYTES {
                return Err(format!("image from {} is over 1 MB", host_of(url)));
            }
            body.extend_from_slice(&chunk);
        }
        let name = format!("{stem}.{ext}");
        let dir = self.dir.clone();
        let file = name.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            // Written aside and renamed, so the server never serves half an image.
            let part = dir.join(format!(".{file}.part"));
            std::fs::write(&part, &body)?;
            std::fs::rename(&part, dir.join(&file))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot write {}: {e}", self.dir.display()))?;
        Ok(name)
    }
}

/// How long a cached image no offer advertises is kept: a pull may have fetched it and
/// not stored its offer yet.
const UNUSED_KEPT: Duration = Duration::from_secs(24 * 3600);

/// Deletes the cached provider images in `dir` no offer advertises any more, and the
/// leftovers of interrupted downloads, once last written more than a day ago; returns how
/// many went. Only this cache's own names are touched (`p-<hash>.<ext>`, `.p-….part`): the
/// store's own images in the same directory never are. Runs with the hourly retention.
pub async fn prune(db: &shared::db::Db, dir: &Path) -> Result<usize, String> {
    let reads = db.clone();
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let advertised = {
            let conn = reads.read().map_err(|e| e.to_string())?;
            shared::repo::advertised_images(&conn, "/images/p-").map_err(|e| e.to_string())?
        };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
        };
        let mut deleted = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = (is_cached_name(&name) && !advertised.contains(&format!("/images/{name}")))
                || (name.starts_with(".p-") && name.ends_with(".part"));
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > UNUSED_KEPT);
            if ours && old {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => deleted += 1,
                    Err(e) => log::warn!("cannot delete the unused coupon image {name}: {e}"),
                }
            }
        }
        Ok(deleted)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Whether `name` is a file this cache writes: [`stem`] and one of the kept types.
fn is_cached_name(name: &str) -> bool {
    let Some((stem, ext)) = name.rsplit_once('.') else {
        return false;
    };
    ["jpg", "png", "gif"].contains(&ext)
        && stem.len() == 2 + 24
        && stem.starts_with("p-")
        && stem[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A stable file name for `url`: `p-` and the first 24 hex digits of its SHA-256.
fn stem(url: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
    let hex: String = digest
        .as_ref()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("p-{hex}")
}

/// The host of a URL, for logs (the path may carry tokens).
fn host_of(url: &str) -> &str {
    url.split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("the provider")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn images_no_offer_advertises_are_deleted_after_a_day_and_the_store_s_own_never() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = shared::config::DatabaseConfig {
            path: tmp.path().join("t.db"),
            ..shared::config::DatabaseConfig::default()
        };
        let db = shared::db::Db::open(&cfg, false).unwrap();
        let used = format!("{}.jpg", stem("https://cdn/used.jpg"));
        let unused = format!("{}.png", stem("https://cdn/gone.png"));
        let fresh = format!("{}.gif", stem("https://cdn/new.gif"));
        let path = format!("/images/{used}");
        db.writer
            .write(move |c| {
                c.execute(
                    "INSERT INTO offers (id, provider, provider_ref, short_description, start_date, end_date, image_url, rule, updated_at)
                     VALUES ('O1', 'koupon', 'r', 'x', '2026-01-01', '2099-12-31', ?1, '{}', 1)",
                    [path],
                )
            })
            .await
            .unwrap();
        let dir = tmp.path().join("images");
        std::fs::create_dir(&dir).unwrap();
        let day_ago = std::time::SystemTime::now() - Duration::from_secs(25 * 3600);
        for name in [
            &used,
            &unused,
            &fresh,
            &"CouponImage24.jpg".to_owned(),
            &format!(".{unused}.part"),
        ] {
            let f = std::fs::File::create(dir.join(name)).unwrap();
            if *name != fresh {
                f.set_modified(day_ago).unwrap();
            }
        }
        assert_eq!(prune(&db, &dir).await.unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec!["CouponImage24.jpg".to_owned(), fresh, used];
        want.sort();
        assert_eq!(left, want);
        assert_eq!(prune(&db, &tmp.path().join("none")).await.unwrap(), 0);
    }

    #[test]
    fn names_are_stable_and_logs_name_only_the_host() {
        assert_eq!(stem("https://x/a.jpg"), stem("https://x/a.jpg"));
        assert_ne!(stem("https://x/a.jpg"), stem("https://x/b.jpg"));
        assert_eq!(stem("https://x/a.jpg").len(), 2 + 24);
        assert_eq!(
            host_of("https://cdn.example.com/img/1.png?token=s"),
            "cdn.example.com"
        );
    }
}
