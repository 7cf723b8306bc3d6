//! Maps and aggregations: their numbers, kinds and value layouts.
//!
//! # Design
//!
//! The client defines every map before arming a program that uses it; programs
//! name maps by a small number ([`MapId`]) chosen by the client. A map is either a
//! plain hash map (lookup, update, delete) or an aggregation, kept per CPU by the
//! stub and merged by the client. The value layout of each aggregation is fixed
//! here so both sides agree on it byte for byte.
//!
//! # Invariants
//!
//! - An aggregation's value size is always [`AggregateKind::value_size`]; a map
//!   definition that says otherwise is refused.
//! - All value fields are little-endian 64-bit words.

use core::fmt;

use serde::{Deserialize, Serialize};

/// A map's number, chosen by the client when it defines the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MapId(pub u16);

impl fmt::Display for MapId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "map {}", self.0)
    }
}

/// Largest key a map may have, in bytes.
pub const MAX_KEY_SIZE: u16 = 256;
/// Largest value a plain hash map may have, in bytes.
pub const MAX_VALUE_SIZE: u16 = 512;
/// Most buckets a linear histogram may have, besides its two outlier buckets.
pub const MAX_LINEAR_BUCKETS: u64 = 1024;
/// Buckets of a log2 histogram: negatives, zero, then one per power of two
/// `[2^k, 2^(k+1))` for `k` in `0..=62`.
pub const LOG2_BUCKETS: usize = 65;

/// How values folded into an aggregation combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AggregateKind {
    /// Number of calls; value: `[count]`.
    Count,
    /// Sum of values (wrapping, two's complement); value: `[sum]`.
    Sum,
    /// Smallest value (signed); value: `[min]`, `i64::MAX` when empty.
    Min,
    /// Largest value (signed); value: `[max]`, `i64::MIN` when empty.
    Max,
    /// Average; value: `[count, sum]`.
    Avg,
    /// Count, sum, min and max together; value: `[count, sum, min, max]`.
    Stats,
    /// Power-of-two histogram; value: [`LOG2_BUCKETS`] counts, see [`log2_bucket`].
    Log2Hist,
    /// Linear histogram over `[min, max)` in steps of `step`; value: one count for
    /// values below `min`, one per step, one for values at or above `max`.
    LinearHist {
        /// Lowest value of the first regular bucket.
        min: i64,
        /// End (exclusive) of the last regular bucket.
        max: i64,
        /// Width of each regular bucket; at least 1.
        step: u64,
    },
}

impl AggregateKind {
    /// Number of regular buckets of a linear histogram (without the two outliers),
    /// or `None` if the parameters are invalid.
    #[inline]
    pub const fn linear_buckets(min: i64, max: i64, step: u64) -> Option<u64> {
        if step == 0 || max <= min {
            return None;
        }
        let span = max.wrapping_sub(min) as u64;
        let buckets = span.div_ceil(step);
        if buckets > MAX_LINEAR_BUCKETS {
            None
        } else {
            Some(buckets)
        }
    }

    /// Size in bytes of one value of this aggregation, or `None` for invalid
    /// linear-histogram parameters.
    pub const fn value_size(self) -> Option<u16> {
        let words = match self {
            AggregateKind::Count | AggregateKind::Sum | AggregateKind::Min | AggregateKind::Max => {
                1
            }
            AggregateKind::Avg => 2,
            AggregateKind::Stats => 4,
            AggregateKind::Log2Hist => LOG2_BUCKETS as u64,
            AggregateKind::LinearHist { min, max, step } => {
                match Self::linear_buckets(min, max, step) {
                    Some(buckets) => buckets + 2,
                    None => return None,
                }
            }
        };
        Some((words * 8) as u16)
    }
}

// The bucket functions run in probe context (aggregations): `#[inline]` has the
// stub compile them itself, at its own optimisation level rather than this
// crate's (kernel profiles build the protocol for size).

/// The log2-histogram bucket of a value: 0 for negatives, 1 for zero, and
/// `k + 2` for values in `[2^k, 2^(k+1))`.
#[inline]
pub const fn log2_bucket(value: i64) -> usize {
    if value < 0 {
        0
    } else if value == 0 {
        1
    } else {
        (63 - value.leading_zeros()) as usize + 2
    }
}

/// The linear-histogram bucket of a value: 0 below `min`, `1 + (value - min) / step`
/// inside, and `buckets + 1` at or above `max`.
#[inline]
pub const fn linear_bucket(value: i64, min: i64, max: i64, step: u64) -> usize {
    if value < min {
        0
    } else if value >= max {
        match AggregateKind::linear_buckets(min, max, step) {
            Some(buckets) => buckets as usize + 1,
            None => 0,
        }
    } else {
        1 + ((value.wrapping_sub(min) as u64) / step) as usize
    }
}

/// What kind of map a definition creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MapKind {
    /// A hash map shared by all CPUs: lookup, update, delete.
    Hash,
    /// A per-CPU aggregation, folded with the `aggregate` helper.
    Aggregate(AggregateKind),
}

/// A map definition, as the client sends it and as the verifier checks against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MapSpec {
    /// The map's number.
    pub map: MapId,
    /// Hash map or aggregation.
    pub kind: MapKind,
    /// Key size in bytes, `1..=MAX_KEY_SIZE` (a key-less aggregation uses a 1-byte key of 0).
    pub key_size: u16,
    /// Value size in bytes: `1..=MAX_VALUE_SIZE` for hash maps, the kind's size for aggregations.
    pub value_size: u16,
    /// Most entries the map holds; updates past it fail and are counted as drops.
    pub max_entries: u32,
}

/// Why a map definition is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapSpecError {
    /// Key size zero or above [`MAX_KEY_SIZE`].
    KeySize,
    /// Value size zero, above [`MAX_VALUE_SIZE`], or not the aggregation's size.
    ValueSize,
    /// Linear histogram with an empty range, zero step or too many buckets.
    HistogramRange,
    /// No entries allowed.
    NoEntries,
}

impl fmt::Display for MapSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MapSpecError::KeySize => "key size must be between 1 and 256 bytes",
            MapSpecError::ValueSize => "value size does not fit the map kind",
            MapSpecError::HistogramRange => {
                "linear histogram needs min < max, step >= 1, <= 1024 buckets"
            }
            MapSpecError::NoEntries => "a map must allow at least one entry",
        })
    }
}

impl MapSpec {
    /// Checks the definition's sizes and parameters.
    pub fn validate(&self) -> Result<(), MapSpecError> {
        if self.key_size == 0 || self.key_size > MAX_KEY_SIZE {
            return Err(MapSpecError::KeySize);
        }
        if self.max_entries == 0 {
            return Err(MapSpecError::NoEntries);
        }
        match self.kind {
            MapKind::Hash => {
                if self.value_size == 0 || self.value_size > MAX_VALUE_SIZE {
                    return Err(MapSpecError::ValueSize);
                }
            }
            MapKind::Aggregate(kind) => match kind.value_size() {
                None => return Err(MapSpecError::HistogramRange),
                Some(size) if size != self.value_size => return Err(MapSpecError::ValueSize),
                Some(_) => {}
            },
        }
        Ok(())
    }

    /// Whether the map is a per-CPU aggregation.
    pub const fn is_aggregate(&self) -> bool {
        matches!(self.kind, MapKind::Aggregate(_))
    }
}

/// A lookup of map definitions by number, as the verifier needs it.
pub trait MapShapes {
    /// The definition of `map`, if defined.
    fn spec(&self, map: MapId) -> Option<MapSpec>;
}

impl MapShapes for [MapSpec] {
    fn spec(&self, map: MapId) -> Option<MapSpec> {
        self.iter().find(|spec| spec.map == map).copied()
    }
}

impl<const N: usize> MapShapes for [MapSpec; N] {
    fn spec(&self, map: MapId) -> Option<MapSpec> {
        self.as_slice().spec(map)
    }
}

impl<T: MapShapes + ?Sized> MapShapes for &T {
    fn spec(&self, map: MapId) -> Option<MapSpec> {
        (**self).spec(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_buckets_cover_the_range() {
        assert_eq!(log2_bucket(-5), 0);
        assert_eq!(log2_bucket(0), 1);
        assert_eq!(log2_bucket(1), 2);
        assert_eq!(log2_bucket(2), 3);
        assert_eq!(log2_bucket(3), 3);
        assert_eq!(log2_bucket(1024), 12);
        assert_eq!(log2_bucket(i64::MAX), 64);
        assert_eq!(log2_bucket(i64::MAX), LOG2_BUCKETS - 1);
    }

    #[test]
    fn linear_buckets_have_outliers() {
        assert_eq!(AggregateKind::linear_buckets(0, 100, 10), Some(10));
        assert_eq!(AggregateKind::linear_buckets(0, 101, 10), Some(11));
        assert_eq!(linear_bucket(-1, 0, 100, 10), 0);
        assert_eq!(linear_bucket(0, 0, 100, 10), 1);
        assert_eq!(linear_bucket(99, 0, 100, 10), 10);
        assert_eq!(linear_bucket(100, 0, 100, 10), 11);
        let kind = AggregateKind::LinearHist {
            min: 0,
            max: 100,
            step: 10,
        };
        assert_eq!(kind.value_size(), Some(12 * 8));
        assert_eq!(
            AggregateKind::LinearHist {
                min: 5,
                max: 5,
                step: 1
            }
            .value_size(),
            None
        );
    }

    #[test]
    fn specs_are_validated() {
        let spec = MapSpec {
            map: MapId(1),
            kind: MapKind::Aggregate(AggregateKind::Stats),
            key_size: 8,
            value_size: 32,
            max_entries: 16,
        };
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(
            MapSpec {
                value_size: 8,
                ..spec
            }
            .validate(),
            Err(MapSpecError::ValueSize)
        );
        assert_eq!(
            MapSpec {
                key_size: 0,
                ..spec
            }
            .validate(),
            Err(MapSpecError::KeySize)
        );
        assert_eq!(
            MapSpec {
                max_entries: 0,
                ..spec
            }
            .validate(),
            Err(MapSpecError::NoEntries)
        );
    }
}
