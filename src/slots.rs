//! Pulls limited to a priority range ([`PullFilter`]), and priority slots ([`PrioritySlots`]):
//! how many jobs of each priority range a worker with S slots may run at once, after
//! proletariat's `prioritySlots` and its `SACRED_GUARANTEES` option (DESIGN.md §3.14).
//!
//! Invariants kept here:
//! - A filtered pull returns only a job whose priority lies in the filter's range, and the best
//!   such job in pull order (highest priority first, FIFO within one), without listing the
//!   index directories of priorities outside the range (FORMAT.md §13.4).
//! - [`PrioritySlots::startable`] never lets a range start a job that would take a slot
//!   guaranteed to a range it may not borrow from: in the default mode a range borrows only
//!   from lower ranges, in the strict mode only from the lowest one.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::index::ClassRange;
use crate::layout::LeaseKind;
use crate::store::Store;
use crate::watch::Channel;
use crate::work::WorkLease;

/// Which priorities a pull may take: `min_priority <= priority < max_priority` (the minimum
/// inclusive, the maximum exclusive; `None` leaves that side open). The default takes any.
///
/// ```
/// use jobdir::PullFilter;
/// let f = PullFilter::between(1, 2);
/// assert!(f.contains(1) && !f.contains(2) && !f.contains(0));
/// assert!(PullFilter::at_least(5).contains(i32::MAX));
/// assert!(PullFilter::below(0).contains(-3));
/// assert!(PullFilter::default().contains(i32::MIN));
/// let g = PullFilter { min_priority: Some(3), ..PullFilter::default() };
/// assert_eq!(g, PullFilter::at_least(3));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PullFilter {
    /// The lowest priority taken (inclusive); `None`: no lower bound.
    pub min_priority: Option<i32>,
    /// Only priorities below this one are taken (exclusive); `None`: no upper bound.
    pub max_priority: Option<i32>,
}

impl PullFilter {
    /// Any priority (the same as [`Store::pull_work`]).
    ///
    /// ```
    /// assert_eq!(jobdir::PullFilter::any(), jobdir::PullFilter::default());
    /// ```
    pub fn any() -> PullFilter {
        PullFilter::default()
    }

    /// Priorities at or above `min`.
    ///
    /// ```
    /// assert!(jobdir::PullFilter::at_least(2).contains(2));
    /// ```
    pub fn at_least(min: i32) -> PullFilter {
        PullFilter {
            min_priority: Some(min),
            max_priority: None,
        }
    }

    /// Priorities below `max`.
    ///
    /// ```
    /// assert!(!jobdir::PullFilter::below(2).contains(2));
    /// ```
    pub fn below(max: i32) -> PullFilter {
        PullFilter {
            min_priority: None,
            max_priority: Some(max),
        }
    }

    /// Priorities `min <= p < max` (empty when `min >= max`).
    ///
    /// ```
    /// assert!(jobdir::PullFilter::between(0, 1).contains(0));
    /// assert!(!jobdir::PullFilter::between(1, 1).contains(1));
    /// ```
    pub fn between(min: i32, max: i32) -> PullFilter {
        PullFilter {
            min_priority: Some(min),
            max_priority: Some(max),
        }
    }

    /// True when a job of this priority passes the filter.
    ///
    /// ```
    /// assert!(jobdir::PullFilter::between(-1, 3).contains(-1));
    /// ```
    pub fn contains(&self, priority: i32) -> bool {
        self.min_priority.is_none_or(|m| priority >= m)
            && self.max_priority.is_none_or(|m| priority < m)
    }

    pub(crate) fn classes(&self) -> ClassRange {
        ClassRange::of(self.min_priority, self.max_priority)
    }
}

impl Store {
    /// Like [`pull_work`](Store::pull_work), but claims only a job whose priority passes
    /// `filter`: the best such job in pull order, or `None` at once if there is none.
    ///
    /// Cost: a filter with no maximum (`at_least`) takes from the front of the index as an
    /// unfiltered pull does, and stops as soon as the front holds lower priorities. A filter
    /// with a maximum keeps its own bounded view of the index in this process (at most 8 such
    /// views; the least recently used is dropped), which lists only the priority class
    /// directories inside the range: the classes above it are never read, whatever their
    /// backlog. Several threads pulling with different filters on one handle may wait up to the
    /// poll interval for a new job only some of them can take.
    ///
    /// ```
    /// use jobdir::{CreateOptions, PullFilter};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let low = store.create_with(&"low", CreateOptions::default().priority(0))?;
    /// let high = store.create_with(&"high", CreateOptions::default().priority(5))?;
    /// let job = store.pull_work_with(&PullFilter::below(5))?.unwrap();
    /// assert_eq!(job.id(), low); // the high job is not taken, though it comes first
    /// assert!(store.pull_work_with(&PullFilter::below(5))?.is_none());
    /// assert_eq!(store.pull_work_with(&PullFilter::at_least(1))?.unwrap().id(), high);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pull_work_with(&self, filter: &PullFilter) -> Result<Option<WorkLease>> {
        self.pull_next_in(LeaseKind::Work, &filter.classes(), |key| {
            self.try_work(key, None)
        })
    }

    /// Like [`pull_work_with`](Store::pull_work_with), but waits up to `timeout` for a job that
    /// passes `filter`, woken by file events (at worst by the poll interval).
    ///
    /// ```
    /// use std::time::Duration;
    /// use jobdir::{CreateOptions, PullFilter};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// store.create_with(&"low", CreateOptions::default().priority(0))?;
    /// let s2 = store.clone();
    /// std::thread::spawn(move || s2.create_with(&"high", CreateOptions::default().priority(9)));
    /// let job = store.pull_work_timeout_with(&PullFilter::at_least(1), Duration::from_secs(10))?;
    /// assert_eq!(job.unwrap().request(), "high");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pull_work_timeout_with(
        &self,
        filter: &PullFilter,
        timeout: Duration,
    ) -> Result<Option<WorkLease>> {
        self.pull_blocking(Channel::Work, timeout, || self.pull_work_with(filter))
    }

    /// Waits up to `timeout` for a job that passes any of `filters`, trying them in the order
    /// given each time (give disjoint ranges, highest first, to get the best job overall). No
    /// filter at all takes nothing. [`PrioritySlots::filters`] gives such a list.
    ///
    /// ```
    /// use std::time::Duration;
    /// use jobdir::{CreateOptions, PullFilter};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// for p in [0, 1, 2] {
    ///     store.create_with(&p, CreateOptions::default().priority(p))?;
    /// }
    /// let filters = [PullFilter::at_least(2), PullFilter::below(1)]; // not priority 1
    /// let t = Duration::from_millis(10);
    /// let first = store.pull_work_timeout_among(&filters, t)?.unwrap();
    /// let second = store.pull_work_timeout_among(&filters, t)?.unwrap();
    /// assert_eq!((first.priority(), second.priority()), (2, 0));
    /// assert!(store.pull_work_timeout_among(&filters, t)?.is_none()); // the others are held
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pull_work_timeout_among(
        &self,
        filters: &[PullFilter],
        timeout: Duration,
    ) -> Result<Option<WorkLease>> {
        self.pull_among(filters, None, timeout)
    }

    /// [`pull_work_timeout_among`](Self::pull_work_timeout_among) as an instance: within each
    /// filter, its own jobs first ([`Store::pull_work_as_with`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use jobdir::{Affinity, CreateOptions, PullFilter};
    /// let dir = tempfile::tempdir()?;
    /// let store = jobdir::Store::open(dir.path())?;
    /// let me: jobdir::InstanceId = "w".parse()?;
    /// store.available(&me)?;
    /// store.create_with(&"mine", CreateOptions::default().instance(me.clone()))?;
    /// let who = Affinity::new(me);
    /// let job = store.pull_work_timeout_among_as(&who, &[PullFilter::any()], Duration::ZERO)?;
    /// assert_eq!(job.unwrap().request(), "mine");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pull_work_timeout_among_as(
        &self,
        who: &crate::Affinity,
        filters: &[PullFilter],
        timeout: Duration,
    ) -> Result<Option<WorkLease>> {
        self.pull_among(filters, Some(who), timeout)
    }

    fn pull_among(
        &self,
        filters: &[PullFilter],
        who: Option<&crate::Affinity>,
        timeout: Duration,
    ) -> Result<Option<WorkLease>> {
        self.pull_blocking(Channel::Work, timeout, || {
            for filter in filters {
                if let Some(job) = self.pull_work_scoped(&filter.classes(), who)? {
                    return Ok(Some(job));
                }
            }
            Ok(None)
        })
    }
}

/// Priority slots: a worker with `total` slots reserves some of them for ranges of priorities
/// (proletariat's `slots` and `prioritySlots`), and [`startable`](Self::startable) says, from
/// the jobs running now in each range, which ranges may start another job.
///
/// The ranges: each reserved entry `P:S` starts a range at priority `P` (up to the next entry's
/// `P`, exclusive; the highest range has no upper bound) with `S` guaranteed slots. The **base
/// range** holds every priority below the lowest `P` — negative priorities included — and gets
/// the slots left over, `total - ΣS` (possibly none: then base-range jobs never run here).
/// Range 0 is the base range; range `i` is the `i`-th reserved entry in increasing `P`.
///
/// - **Default mode**: a job may use the slots of its own range and of every lower range, never
///   those of a higher one. So low priorities never take the space reserved for higher ones,
///   and the highest range may take every slot.
/// - **Strict mode** (`SACRED_GUARANTEES`): a job may use its own range's slots and the base
///   range's, nothing else. Beyond its own guarantee a range borrows only from the base range,
///   so every other range's guarantee holds whatever the higher ranges do.
///
/// The seed's example, 100 slots with `{1:30, 2:20}`, gives these limits (the most a range may
/// run when nothing else runs):
///
/// ```
/// use jobdir::PrioritySlots;
/// let loose = PrioritySlots::parse(100, "1:30,2:20", false)?;
/// assert_eq!(loose.limits(), [50, 80, 100]); // priorities < 1, 1 <= p < 2, >= 2
/// let strict = PrioritySlots::parse(100, "1:30,2:20", true)?;
/// assert_eq!(strict.limits(), [50, 80, 70]);
/// // 50 low jobs run: no more low ones; the 50 slots above stay for priorities >= 1.
/// assert_eq!(loose.startable(&[50, 0, 0]), [false, true, true]);
/// // Strict: 70 high jobs fill their 20 and the base range's 50; the 30 of range 1 stay free.
/// assert_eq!(strict.startable(&[0, 0, 70]), [false, true, false]);
/// # Ok::<(), jobdir::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrioritySlots {
    total: usize,
    /// (lowest priority of the range, guaranteed slots), increasing by priority.
    reserved: Vec<(i32, usize)>,
    strict: bool,
}

impl PrioritySlots {
    /// Slots for `total` jobs at once, with `reserved` guarantees (`(P, S)`: priorities from `P`
    /// get `S` slots). Fails with [`Error::InvalidOption`] when `total` is 0, a priority is
    /// listed twice, or the guarantees add up to more than `total`.
    ///
    /// ```
    /// use jobdir::PrioritySlots;
    /// let s = PrioritySlots::new(3, &[(1, 2)], false)?;
    /// assert_eq!((s.total(), s.ranges(), s.slots_of(0), s.slots_of(1)), (3, 2, 1, 2));
    /// assert!(PrioritySlots::new(3, &[(1, 2), (5, 2)], false).is_err()); // 4 > 3
    /// # Ok::<(), jobdir::Error>(())
    /// ```
    pub fn new(total: usize, reserved: &[(i32, usize)], strict: bool) -> Result<PrioritySlots> {
        if total == 0 {
            return Err(Error::InvalidOption(
                "priority slots need at least 1 slot".into(),
            ));
        }
        let mut sorted = reserved.to_vec();
        sorted.sort_by_key(|r| r.0);
        if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(Error::InvalidOption(format!(
                "priority {} is given slots twice",
                w[0].0
            )));
        }
        let sum: usize = sorted.iter().map(|r| r.1).sum();
        if sum > total {
            return Err(Error::InvalidOption(format!(
                "the priority slots add up to {sum}, more than the {total} slots there are"
            )));
        }
        Ok(PrioritySlots {
            total,
            reserved: sorted,
            strict,
        })
    }

    /// Parses `P:S,P:S,...` (the `jobdir work --priority-slots` form; spaces allowed).
    ///
    /// ```
    /// use jobdir::PrioritySlots;
    /// assert_eq!(PrioritySlots::parse(100, "2:20, 1:30", false)?.limits(), [50, 80, 100]);
    /// assert!(PrioritySlots::parse(100, "1=30", false).is_err());
    /// # Ok::<(), jobdir::Error>(())
    /// ```
    pub fn parse(total: usize, spec: &str, strict: bool) -> Result<PrioritySlots> {
        let bad = |part: &str| {
            Error::InvalidOption(format!(
                "priority slots {part:?}: expected PRIORITY:SLOTS, as in 1:30,2:20"
            ))
        };
        let mut reserved = Vec::new();
        for part in spec.split(',') {
            let part = part.trim();
            let (p, s) = part.split_once(':').ok_or_else(|| bad(part))?;
            let p: i32 = p.trim().parse().map_err(|_| bad(part))?;
            let s: usize = s.trim().parse().map_err(|_| bad(part))?;
            reserved.push((p, s));
        }
        PrioritySlots::new(total, &reserved, strict)
    }

    /// The number of slots.
    ///
    /// ```
    /// assert_eq!(jobdir::PrioritySlots::new(4, &[], false)?.total(), 4);
    /// # Ok::<(), jobdir::Error>(())
    /// ```
    pub fn total(&self) -> usize {
        self.total
    }

    /// True in strict mode (higher ranges borrow only from the base range).
    ///
    /// ```
    /// assert!(jobdir::PrioritySlots::new(4, &[(1, 1)], true)?.strict());
    /// # Ok::<(), jobdir::Error>(())
    /// ```
    pub fn strict(&self) -> bool {
        self.strict
    }

    /// The number of ranges: the base range and one per reserved entry.
    ///
    /// ```
    /// assert_eq!(jobdir::PrioritySlots::parse(100, "1:30,2:20", false)?.ranges(), 3);
    /// # Ok::<(), jobdir::Error>(())
    /// ```
    pub fn ranges(&self) -> usize {
        self.reserved.len() + 1
    }

    /// The range a priority falls in (0: the base range, below every reserved priority).
    ///
    /// ```
    /// let s = jobdir::PrioritySlots::parse(100, "1:30,2:20", false)?;
    /// assert_eq!([-7, 0, 1, 2, 99].map(|p| s.range_of(p)), [0, 0, 1, 2, 2]);
    /// # Ok::<(), jobdir::Error>(())
    /// ```
    pub fn range_of(&self, priority: i32) -> usize {
        self.reserved.iter().filter(|r| r.0 <= priority).count()
    }

    /// The priorities of a range, as a filter.
    ///
    /// ```
    /// use jobdir::PullFilter;
    /// let s = jobdir::PrioritySlots::parse(100, "1:30,2:20", false)?;
    /// assert_eq!(s.filter_of(0), PullFilter::below(1));
    /// assert_eq!(s.filter_of(1), PullFilter::between(1, 2));
    /// assert_eq!(s.filter_of(2), PullFilter::at_least(2));
    /// # Ok::<(), jobdir::Error>(())
    /// ```
    pub fn filter_of(&self, range: usize) -> PullFilter {
        self.span(range, range)
    }

    /// The slots guaranteed to a range (the base range: those no entry reserves).
    ///
    /// ```
    /// let s = jobdir::PrioritySlots::parse(100, "1:30,2:20", false)?;
    /// assert_eq!([0, 1, 2].map(|r| s.slots_of(r)), [50, 30, 20]);
    /// # Ok::<(), jobdir::Error>(())
    /// ```
    pub fn slots_of(&self, range: usize) -> usize {
        match range {
            0 => self.total - self.reserved.iter().map(|r| r.1).sum::<usize>(),
            i => self.reserved.get(i - 1).map_or(0, |r| r.1),
        }
    }

    /// The most jobs each range may run when no other range runs any.
    ///
    /// ```
    /// let s = jobdir::PrioritySlots::parse(3, "1:2", false)?;
    /// assert_eq!(s.limits(), [1, 3]);
    /// # Ok::<(), jobdir::Error>(())
    /// ```
    pub fn limits(&self) -> Vec<usize> {
        let base = self.slots_of(0);
        (0..self.ranges())
            .map(|i| {
                if i == 0 {
                    base
                } else if self.strict {
                    self.slots_of(i) + base
                } else {
                    (0..=i).map(|j| self.slots_of(j)).sum()
                }
            })
            .collect()
    }

    /// Which ranges may start one more job, given how many run now in each (`running[i]` for
    /// range `i`; missing entries count as 0).
    ///
    /// Default mode: range `i` may start one iff for every range `k >= i`, the jobs running in
    /// ranges `0..=k` are fewer than the slots of ranges `0..=k` (so the ranges above `k` keep
    /// all of theirs). Strict mode: range `i >= 1` may start one iff it runs fewer than its own
    /// slots or the base range's slots are not all used, counting there the base range's jobs
    /// and every other range's jobs beyond its own slots; the base range only in the latter
    /// case. In both modes nothing may start once [`total`](Self::total) jobs run; in the
    /// default mode, when anything may start, the highest range may.
    ///
    /// ```
    /// let s = jobdir::PrioritySlots::parse(3, "1:2", false)?;
    /// assert_eq!(s.startable(&[1, 0]), [false, true]); // the low job has its one slot
    /// assert_eq!(s.startable(&[0, 2]), [true, true]);
    /// assert_eq!(s.startable(&[0, 3]), [false, false]); // full
    /// # Ok::<(), jobdir::Error>(())
    /// ```
    pub fn startable(&self, running: &[usize]) -> Vec<bool> {
        let n = self.ranges();
        let used = |i: usize| running.get(i).copied().unwrap_or(0);
        if (0..n).map(used).sum::<usize>() >= self.total {
            return vec![false; n];
        }
        if self.strict {
            let base = self.slots_of(0);
            let pool_used = used(0)
                + (1..n)
                    .map(|i| used(i).saturating_sub(self.slots_of(i)))
                    .sum::<usize>();
            let pool_free = pool_used < base;
            (0..n)
                .map(|i| pool_free || (i > 0 && used(i) < self.slots_of(i)))
                .collect()
        } else {
            // room[k]: ranges 0..=k run fewer jobs than they have slots.
            let mut room = Vec::with_capacity(n);
            let (mut ran, mut have) = (0usize, 0usize);
            for k in 0..n {
                ran += used(k);
                have += self.slots_of(k);
                room.push(ran < have);
            }
            (0..n).map(|i| room[i..].iter().all(|r| *r)).collect()
        }
    }

    /// The filters to pull with now: the ranges that may start a job, merged where adjacent,
    /// highest priorities first (for [`Store::pull_work_timeout_among`]). Empty when no range
    /// may start one. In the default mode it is at most one filter with no maximum, since a
    /// range that may start one implies that every higher range may.
    ///
    /// ```
    /// use jobdir::{PrioritySlots, PullFilter};
    /// let s = PrioritySlots::parse(100, "1:30,2:20", true)?;
    /// assert_eq!(s.filters(&[0, 0, 0]), [PullFilter::any()]);
    /// assert_eq!(s.filters(&[50, 0, 5]), [PullFilter::at_least(1)]);
    /// assert_eq!(s.filters(&[50, 30, 5]), [PullFilter::at_least(2)]);
    /// assert_eq!(s.filters(&[50, 10, 20]), [PullFilter::between(1, 2)]);
    /// assert!(s.filters(&[50, 30, 20]).is_empty());
    /// # Ok::<(), jobdir::Error>(())
    /// ```
    pub fn filters(&self, running: &[usize]) -> Vec<PullFilter> {
        let ok = self.startable(running);
        let mut out = Vec::new();
        let mut i = ok.len();
        while i > 0 {
            if !ok[i - 1] {
                i -= 1;
                continue;
            }
            let hi = i - 1;
            let mut lo = hi;
            while lo > 0 && ok[lo - 1] {
                lo -= 1;
            }
            out.push(self.span(lo, hi));
            i = lo;
        }
        out
    }

    /// The priorities of ranges `lo..=hi` as one filter.
    fn span(&self, lo: usize, hi: usize) -> PullFilter {
        PullFilter {
            min_priority: (lo > 0).then(|| self.reserved[lo - 1].0),
            max_priority: self.reserved.get(hi).map(|r| r.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's example: 100 slots, `{1:30, 2:20}`.
    fn seed(strict: bool) -> PrioritySlots {
        PrioritySlots::parse(100, "1:30,2:20", strict).expect("valid")
    }

    /// The most jobs range `r` can reach from `running` by starting its own jobs only.
    fn fill(s: &PrioritySlots, mut running: Vec<usize>, r: usize) -> usize {
        while s.startable(&running)[r] {
            running[r] += 1;
        }
        running[r]
    }

    #[test]
    fn the_seed_limits_hold_when_one_range_runs_alone() {
        for (strict, limits) in [(false, [50, 80, 100]), (true, [50, 80, 70])] {
            let s = seed(strict);
            assert_eq!(s.limits(), limits);
            for (r, limit) in limits.iter().enumerate() {
                assert_eq!(
                    fill(&s, vec![0, 0, 0], r),
                    *limit,
                    "strict {strict} range {r}"
                );
            }
        }
    }

    #[test]
    fn low_priority_work_never_takes_the_reserved_slots() {
        for strict in [false, true] {
            let s = seed(strict);
            // Whatever the ranges above run, the base range never exceeds its 50.
            for mid in [0, 10, 30, 60] {
                for high in [0, 5, 20] {
                    let low = fill(&s, vec![0, mid, high], 0);
                    assert!(low <= 50, "strict {strict}: {low} low with {mid}/{high}");
                    // And ranges 0..=1 together never take range 2's 20 (default mode).
                    if !strict {
                        assert!(low + mid <= 80 || low == 0);
                    }
                }
            }
        }
    }

    #[test]
    fn default_mode_lets_the_highest_range_take_every_slot() {
        let s = seed(false);
        assert_eq!(fill(&s, vec![0, 0, 0], 2), 100);
        // With range 1 busy up to its limit, the highest range still gets the rest.
        assert_eq!(fill(&s, vec![0, 80, 0], 2), 20);
        // Range 2 may steal range 1's guarantee: 100 high jobs leave range 1 nothing.
        assert_eq!(fill(&s, vec![0, 0, 100], 1), 0);
    }

    #[test]
    fn strict_mode_keeps_every_guarantee_but_the_base_ranges() {
        let s = seed(true);
        // High jobs fill their 20 and the base range's 50; range 1 keeps its 30.
        assert_eq!(fill(&s, vec![0, 0, 0], 2), 70);
        assert_eq!(fill(&s, vec![0, 0, 70], 1), 30);
        // Range 1 beyond its 30 borrows only from the base range; range 2 keeps its 20.
        assert_eq!(fill(&s, vec![0, 0, 0], 1), 80);
        assert_eq!(fill(&s, vec![0, 80, 0], 2), 20);
        // The base range's jobs hold their slots: high work gets its 20 and no more.
        assert_eq!(fill(&s, vec![50, 0, 0], 2), 20);
        assert_eq!(fill(&s, vec![30, 0, 0], 2), 40);
    }

    #[test]
    fn the_total_is_never_exceeded_and_something_high_may_start_until_it_is_reached() {
        for strict in [false, true] {
            let s = seed(strict);
            for a in (0..=100).step_by(5) {
                for b in (0..=100 - a).step_by(5) {
                    for c in (0..=100 - a - b).step_by(5) {
                        let running = [a, b, c];
                        let ok = s.startable(&running);
                        if a + b + c >= 100 {
                            assert_eq!(ok, [false, false, false], "{running:?}");
                        }
                        if !strict {
                            // Upward closed: a range that may start implies the higher ones may.
                            for i in 0..2 {
                                assert!(!ok[i] || ok[i + 1], "{running:?}");
                            }
                            if a + b + c < 100 {
                                assert!(ok[2], "{running:?}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_brief_example_three_slots_one_low() {
        let s = PrioritySlots::parse(3, "1:2", false).expect("valid");
        assert_eq!(s.limits(), [1, 3]);
        assert_eq!(s.filters(&[1, 0]), [PullFilter::at_least(1)]);
        assert_eq!(s.filters(&[1, 2]), []);
        let strict = PrioritySlots::parse(3, "1:1,2:1", true).expect("valid");
        assert_eq!(strict.limits(), [1, 2, 2]);
        assert_eq!(strict.startable(&[0, 0, 2]), [false, true, false]);
    }

    #[test]
    fn a_base_range_without_slots_runs_nothing_below_the_lowest_key() {
        let s = PrioritySlots::parse(2, "0:2", false).expect("valid");
        assert_eq!(s.range_of(-1), 0);
        assert_eq!(s.limits(), [0, 2]);
        assert_eq!(s.startable(&[0, 0]), [false, true]);
        assert_eq!(s.filters(&[0, 0]), [PullFilter::at_least(0)]);
    }

    fn fast_store(dir: &std::path::Path) -> Store {
        Store::builder(dir)
            .durability(crate::Durability::Fast)
            .open()
            .expect("open")
    }

    #[test]
    fn filtered_pulls_skip_a_large_backlog_of_other_priorities() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = fast_store(dir.path());
        let opts = |p| crate::CreateOptions::default().priority(p);
        // More high jobs than one load of the frontier holds (1024), then low and middle ones.
        for i in 0..1100 {
            store.create_with(&i, opts(9)).expect("create");
        }
        let low: Vec<_> = (0..3)
            .map(|i| store.create_with(&i, opts(-1)).expect("create"))
            .collect();
        let mid = store.create_with(&"mid", opts(3)).expect("create");
        // Only the low ones, oldest first, though 1100 higher jobs come before them.
        for want in &low {
            let job = store.pull_work_with(&PullFilter::below(0)).expect("pull");
            let job = job.expect("a low job");
            assert_eq!(job.id(), *want);
            job.fulfill(b"low").expect("fulfil");
        }
        assert!(
            store
                .pull_work_with(&PullFilter::below(0))
                .expect("pull")
                .is_none()
        );
        let job = store
            .pull_work_with(&PullFilter::between(1, 9))
            .expect("pull");
        let job = job.expect("the middle job");
        assert_eq!(job.id(), mid);
        job.fulfill(b"mid").expect("fulfil");
        // Unfiltered and `at_least` pulls still see every high job exactly once.
        let mut seen = std::collections::HashSet::new();
        let mut n = 0;
        loop {
            let job = if n % 2 == 0 {
                store.pull_work_with(&PullFilter::at_least(5))
            } else {
                store.pull_work()
            };
            let Some(job) = job.expect("pull") else { break };
            assert_eq!(job.priority(), 9);
            assert!(seen.insert(job.id()), "pulled twice");
            job.fulfill(b"high").expect("fulfil");
            n += 1;
        }
        assert_eq!(seen.len(), 1100);
        assert!(store.pull_work().expect("pull").is_none());
    }

    #[test]
    fn a_filter_with_no_room_takes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = fast_store(dir.path());
        store.create(&"x").expect("create");
        for f in [
            PullFilter::between(3, 3),
            PullFilter::below(i32::MIN),
            PullFilter::at_least(1),
            PullFilter::below(0),
        ] {
            assert!(store.pull_work_with(&f).expect("pull").is_none(), "{f:?}");
        }
        assert!(
            store
                .pull_work_with(&PullFilter::between(0, 1))
                .expect("pull")
                .is_some()
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        for bad in ["", "1", "a:1", "1:-1", "1:2,1:3", "1:200"] {
            assert!(PrioritySlots::parse(100, bad, false).is_err(), "{bad:?}");
        }
        assert!(PrioritySlots::new(0, &[], false).is_err());
    }
}
