//! The offer catalog, kept in memory. Offers change only when the sync daemon or an import
//! writes them, while every lane request reads them, so each process holds the whole
//! catalog (parsed rules included) and reloads it when `meta.catalog_version` moves
//! (triggers on the offers table maintain it). A refresher thread checks once a second;
//! readers never wait for a reload.
//!
//! Offers newer than the loaded catalog are still found: callers fall back to the
//! database for an id the catalog does not know yet.

use crate::db::ReadPool;
use crate::domain::Offer;
use crate::repo;
use chrono::NaiveDate;
use rusqlite::Connection;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// One consistent snapshot of every offer.
#[derive(Debug, Default)]
pub struct Catalog {
    pub version: i64,
    offers: Vec<Arc<Offer>>,
    /// Every lane request looks up about 20 offers by id among 100,000: the ids are kept
    /// inline in the table and the offers beside them, so a lookup touches the table and
    /// the offer, not also a heap string and the `offers` vector (measured: find_offer was
    /// 11% of the HTTP workers' CPU in the lane bench's update phase).
    by_id: HashMap<InlineId, Arc<Offer>>,
    /// Ids longer than [`InlineId`] holds (15 characters of several bytes each).
    by_long_id: HashMap<String, Arc<Offer>>,
    /// Indexes of the untargeted clippable offers and of the clip-free offers: the two
    /// subsets every lane request looks at, kept apart so no request walks the catalog.
    open: Vec<usize>,
    automatic: Vec<usize>,
}

impl Catalog {
    /// Reads the version and every offer in one read transaction, so they agree.
    pub fn load(conn: &Connection) -> rusqlite::Result<Catalog> {
        conn.execute_batch("BEGIN DEFERRED")?;
        let loaded = repo::catalog_version(conn).and_then(|v| Ok((v, repo::all_offers(conn)?)));
        conn.execute_batch("COMMIT")?;
        let (version, offers) = loaded?;
        let offers: Vec<Arc<Offer>> = offers.into_iter().map(Arc::new).collect();
        let mut by_id = HashMap::with_capacity(offers.len());
        let mut by_long_id = HashMap::new();
        for o in &offers {
            match InlineId::new(&o.id) {
                Some(id) => by_id.insert(id, Arc::clone(o)),
                None => by_long_id.insert(o.id.clone(), Arc::clone(o)),
            };
        }
        let indexes = |keep: fn(&Offer) -> bool| -> Vec<usize> {
            offers
                .iter()
                .enumerate()
                .filter(|(_, o)| keep(o))
                .map(|(i, _)| i)
                .collect()
        };
        let open = indexes(|o| !o.targeted && o.requires_clip);
        let automatic = indexes(|o| !o.requires_clip);
        Ok(Catalog {
            version,
            offers,
            by_id,
            by_long_id,
            open,
            automatic,
        })
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Offer>> {
        match InlineId::new(id) {
            Some(key) => self.by_id.get(&key),
            None => self.by_long_id.get(id),
        }
    }

    pub fn len(&self) -> usize {
        self.offers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offers.is_empty()
    }

    /// Offers that have not ended by `today`, in id order (CATAPULT's catalog).
    pub fn not_ended(&self, today: NaiveDate) -> impl Iterator<Item = &Arc<Offer>> {
        self.offers.iter().filter(move |o| o.end_date >= today)
    }

    /// Offers every identified customer may clip without being targeted, live today.
    pub fn open_to_all(&self, today: NaiveDate) -> impl Iterator<Item = &Arc<Offer>> {
        self.live(&self.open, today)
    }

    /// Offers that apply without clipping, live today.
    pub fn automatic(&self, today: NaiveDate) -> impl Iterator<Item = &Arc<Offer>> {
        self.live(&self.automatic, today)
    }

    fn live<'a>(
        &'a self,
        subset: &'a [usize],
        today: NaiveDate,
    ) -> impl Iterator<Item = &'a Arc<Offer>> {
        subset
            .iter()
            .map(|&i| &self.offers[i])
            .filter(move |o| o.usable_on(today))
    }
}

/// An offer id of up to 23 bytes, stored inline (local ids are at most 15 characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct InlineId {
    len: u8,
    bytes: [u8; 23],
}

impl InlineId {
    fn new(id: &str) -> Option<InlineId> {
        let mut bytes = [0; 23];
        bytes.get_mut(..id.len())?.copy_from_slice(id.as_bytes());
        Some(InlineId {
            len: u8::try_from(id.len()).ok()?,
            bytes,
        })
    }
}

/// The current catalog, swapped atomically on reload.
#[derive(Debug, Default)]
pub struct CatalogCache {
    current: RwLock<Arc<Catalog>>,
}

impl CatalogCache {
    pub fn new(catalog: Catalog) -> CatalogCache {
        CatalogCache {
            current: RwLock::new(Arc::new(catalog)),
        }
    }

    pub fn current(&self) -> Arc<Catalog> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads when the stored version differs from the loaded one. Returns whether it did.
    pub fn refresh(&self, conn: &Connection) -> rusqlite::Result<bool> {
        if repo::catalog_version(conn)? == self.current().version {
            return Ok(false);
        }
        let fresh = Arc::new(Catalog::load(conn)?);
        match self.current.write() {
            Ok(mut c) => *c = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(true)
    }

    /// Checks for a new catalog every `interval` on a background thread.
    pub fn start_refresher(self: &Arc<Self>, pool: ReadPool, interval: Duration) {
        let cache = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("catalog-refresh".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                let result = pool
                    .get()
                    .map_err(|e| e.to_string())
                    .and_then(|conn| cache.refresh(&conn).map_err(|e| e.to_string()));
                match result {
                    Ok(true) => {
                        log::info!(offers = cache.current().len(); "offer catalog reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => log::warn!(
                        "offer catalog reload failed (the previous one stays in use): {e}"
                    ),
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start the catalog refresher: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::domain::Mechanic;
    use crate::engine::tests::{items, offer, rule};

    #[test]
    fn finds_offers_by_short_and_by_long_multibyte_ids() {
        let (_dir, conn) = crate::db::scratch_db();
        // 15 characters, 45 bytes: longer than an inline id.
        let long = "€".repeat(15);
        for id in ["O1", "OFFER-123456789", long.as_str()] {
            let rule = rule(Mechanic::PercentOff { basis_points: 1000 }, items(&["1"]));
            repo::upsert_offer(&conn, &offer(id, rule), 1).unwrap();
        }
        let catalog = Catalog::load(&conn).unwrap();
        assert_eq!(catalog.len(), 3);
        for id in ["O1", "OFFER-123456789", long.as_str()] {
            assert_eq!(catalog.get(id).map(|o| o.id.as_str()), Some(id));
        }
        for unknown in ["O2", "O", "", "OFFER-1234567890", "€€"] {
            assert!(catalog.get(unknown).is_none(), "{unknown}");
        }
    }
}
