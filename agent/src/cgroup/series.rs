//! A collector's per-cgroup map (`--by-cgroup`), read into labelled rows.
//!
//! Reading applies what [`Attribution`] decides for each cgroup: its own
//! rows; folded into "other" (the kernel entry removed, its value kept
//! here, so that "other" never goes backwards); or removed because the
//! cgroup is gone.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Mutex, PoisonError},
    time::Instant,
};

use aya::{
    Pod,
    maps::{HashMap, MapData, MapError},
};
use hostscope_common::{
    cgroup::{CgroupKey, OTHER_CGROUP},
    histogram::Histogram,
};

use super::{Attribution, Series, attribution::other_labels};
use crate::{
    collector::Labels,
    probes::{AttachError, Probes},
};

/// A value kept per series: it can be added up.
pub trait Value: Pod + Copy {
    /// Nothing recorded.
    const ZERO: Self;
    /// Adds `other` into `self`.
    fn fold(&mut self, other: &Self);
}

impl Value for Histogram {
    const ZERO: Self = Histogram::ZERO;
    fn fold(&mut self, other: &Self) {
        self.merge(other);
    }
}

impl Value for u64 {
    const ZERO: Self = 0;
    fn fold(&mut self, other: &Self) {
        *self = self.wrapping_add(*other);
    }
}

/// One series read from a per-cgroup map.
#[derive(Debug, Clone, PartialEq)]
pub struct Row<V> {
    /// The cgroup labels (`cgroup`, maybe `container_id` and `pod_uid`).
    pub labels: Labels,
    /// [`CgroupKey::dev`].
    pub dev: u32,
    /// [`CgroupKey::slot`].
    pub slot: u32,
    /// What was recorded.
    pub value: V,
}

/// A per-cgroup kernel map and what was folded out of it into "other".
pub struct PerCgroup<V: Value> {
    map: Mutex<HashMap<MapData, CgroupKey, V>>,
    folded: Mutex<BTreeMap<(u32, u32), V>>,
}

impl<V: Value> PerCgroup<V> {
    /// Takes map `name` from the object.
    pub fn take(probes: &mut Probes, name: &'static str) -> Result<Self, AttachError> {
        Ok(Self {
            map: Mutex::new(probes.take_map(name)?),
            folded: Mutex::new(BTreeMap::new()),
        })
    }

    /// Every series: the cgroups with their own, ordered by path, then
    /// "other" if anything went there.
    pub fn read(&self, attribution: &Attribution) -> Result<Vec<Row<V>>, MapError> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let listed_at = Instant::now();
        // Entries can be removed while the map is walked (by this daemon
        // only, under this lock), so an entry that vanished is skipped.
        let entries: Vec<(CgroupKey, V)> = map.iter().filter_map(Result::ok).collect();
        let ids: BTreeSet<u64> = entries.iter().map(|(key, _)| key.cgroup).collect();
        let series = attribution.resolve(&ids, listed_at);

        let mut folded = self.folded.lock().unwrap_or_else(PoisonError::into_inner);
        let mut other = folded.clone();
        let mut rows = Vec::with_capacity(entries.len() + other.len());
        for (key, value) in entries {
            let place = (key.dev, key.slot);
            match series.get(&key.cgroup) {
                None => other.entry(place).or_insert(V::ZERO).fold(&value),
                Some(Series::Own(labels)) => rows.push(Row {
                    labels: labels.as_ref().clone(),
                    dev: key.dev,
                    slot: key.slot,
                    value,
                }),
                Some(Series::Other) => {
                    // Re-read just before removing: what was recorded
                    // since the walk above is kept too.
                    let latest = map.get(&key, 0).unwrap_or(value);
                    if map.remove(&key).is_ok() {
                        folded.entry(place).or_insert(V::ZERO).fold(&latest);
                        other.entry(place).or_insert(V::ZERO).fold(&latest);
                    } else {
                        other.entry(place).or_insert(V::ZERO).fold(&value);
                    }
                }
                Some(Series::Gone) => {
                    let _ = map.remove(&key);
                }
            }
        }
        debug_assert!(!series.contains_key(&OTHER_CGROUP));
        rows.sort_by(|a, b| (&a.labels, a.dev, a.slot).cmp(&(&b.labels, b.dev, b.slot)));
        rows.extend(other.into_iter().map(|((dev, slot), value)| Row {
            labels: other_labels(),
            dev,
            slot,
            value,
        }));
        Ok(rows)
    }
}
