//! Criterion benchmarks of the store's operations, above all to show that a pull costs the same
//! at 1 k and at 100 k pending jobs (and at 1 M with `JOBDIR_BENCH_1M=1`).
//!
//! ```text
//! cargo bench --bench pull                        # everything, a few minutes
//! cargo bench --bench pull -- pull_fulfil         # one group (a regex over the ids)
//! JOBDIR_BENCH_1M=1 cargo bench --bench pull      # adds the 1 M backlog (many minutes more)
//! JOBDIR_BENCH_DIR=/mnt/bench cargo bench --bench pull
//! ```
//!
//! Stores live in temporary directories under `$JOBDIR_BENCH_DIR`, else the system temporary
//! directory. The filesystem matters more than the code: run on a journaled ext4 (a loop-mounted
//! image will do) or on tmpfs, and say which when quoting figures. A pending job takes three
//! inodes, so the 1 M case needs about 4 M of them: `mkfs.ext4 -N 4000000`, or a tmpfs mounted
//! with `nr_inodes=4000000` (its default runs out).
//!
//! Benchmark ids: `create/{durable,fast}`, `pull_fulfil/{durable,fast}/{1k,100k}`,
//! `pull_release/{durable,fast}/{1k,100k}`, `queue/{durable,fast}`,
//! `notification/{durable,fast}`, `get/1k`, `counts/1k`.
//!
//! How the backlogs are kept at their nominal size:
//! - A backlog is created through a handle opened with [`Durability::Fast`] (creating 100 k jobs
//!   durably takes long) and pulled through a second handle opened in the mode being measured,
//!   on the same directory: durability is a per-handle option; the files are the same.
//! - `pull_fulfil` consumes one job per iteration. A sample runs in chunks of at most a tenth of
//!   the backlog, and before each chunk (untimed) the backlog is topped up by the chunk's size,
//!   so it stays between the nominal size and 110 % of it however many iterations criterion
//!   asks for.
//! - `pull_release` keeps the backlog constant, but a released job goes back to the front of the
//!   queue and is pulled again at once, so one job would collect every attempt, and a claim
//!   lists the job's earlier claims. Every [`RELEASE_RETIRE_EVERY`] iterations (untimed) that
//!   job is fulfilled and replaced by a new one, so the figure is the cost of a pull, not of a
//!   job with thousands of attempts.
//! - Setups flush the machine's dirty data (`sync`) before measuring, so that a durable
//!   operation does not pay for committing the metadata of the jobs the setup just created.
//! - A handle learns of jobs another handle just created through file events, which arrive
//!   asynchronously. A pull that finds nothing yet waits for them, and that wait is not timed
//!   (the number of such waits is printed).
//!
//! Both backlogs exist side by side and the 1 k and 100 k cases of each benchmark run one after
//! the other, so that a change in the machine's load affects both alike.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use jobdir::{Durability, JobId, NotificationLease, Store, WorkLease};
use serde_json::json;
use tempfile::TempDir;

/// How many pull+release iterations one job takes before it is retired (untimed).
const RELEASE_RETIRE_EVERY: u64 = 32;

/// Jobs in the store of the `get`, `counts` and `queue` benchmarks.
const SMALL_STORE: u64 = 1_000;

/// The two durability modes, with the names used in benchmark ids.
const MODES: [(&str, Durability); 2] =
    [("durable", Durability::Durable), ("fast", Durability::Fast)];

/// A fresh temporary directory for one store.
fn bench_dir(what: &str) -> TempDir {
    let base = std::env::var_os("JOBDIR_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).expect("create the bench directory");
    tempfile::Builder::new()
        .prefix(&format!("jobdir-bench-{what}."))
        .tempdir_in(&base)
        .expect("create a temporary directory for the store")
}

fn open(dir: &TempDir, durability: Durability) -> Store {
    Store::builder(dir.path())
        .durability(durability)
        .open()
        .expect("open the store")
}

/// Flushes the machine's dirty data to disk, after a setup that wrote a lot and before anything
/// is measured: on a journaled filesystem an fsync commits every pending metadata change, so
/// the first durable operations after creating 100 k jobs would otherwise pay for them.
fn settle() {
    // SAFETY: sync(2) takes no arguments, cannot fail, and touches no memory of ours.
    unsafe { libc::sync() };
}

/// A small request, like a real job's.
fn request(n: u64) -> serde_json::Value {
    json!({"calculate": format!("{n}+{n}"), "n": n})
}

/// Creates `n` jobs through `store` (meant to be a fast handle).
fn fill(store: &Store, n: u64) -> Vec<JobId> {
    (0..n)
        .map(|i| store.create(&request(i)).expect("create a job"))
        .collect()
}

/// "1k", "100k", "1M".
fn label(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// The backlog sizes of the pull benchmarks.
fn backlog_sizes() -> Vec<u64> {
    let mut sizes = vec![1_000, 100_000];
    if std::env::var("JOBDIR_BENCH_1M").is_ok_and(|v| v == "1") {
        sizes.push(1_000_000);
    }
    sizes
}

/// Pulls that found nothing at first because file events had not arrived yet: how many, and
/// how long they waited (time that is taken out of the measurement).
#[derive(Default)]
struct Stalls {
    count: u64,
    waited: Duration,
}

impl Stalls {
    /// Waits (untimed) for an item `pull` should have found but has not heard of yet.
    fn wait<T>(&mut self, what: &str, pull: impl FnOnce(Duration) -> Option<T>) -> T {
        let started = Instant::now();
        let item = pull(Duration::from_secs(10));
        self.count += 1;
        self.waited += started.elapsed();
        item.unwrap_or_else(|| panic!("no {what} within 10 s"))
    }

    fn report(&self, bench: &str) {
        if self.count > 0 {
            eprintln!(
                "{bench}: {} pulls found nothing at first and waited {:.1?} for file events \
                 (untimed)",
                self.count, self.waited
            );
        }
    }
}

/// The next job: `pull_work`, or an untimed wait if this handle has not yet heard of the jobs
/// another handle created a moment ago.
fn pull_work(store: &Store, stalls: &mut Stalls) -> WorkLease {
    match store.pull_work().expect("pull_work") {
        Some(lease) => lease,
        None => stalls.wait("pending job", |t| {
            store.pull_work_timeout(t).expect("pull_work_timeout")
        }),
    }
}

/// The next notification, like [`pull_work`].
fn pull_notification(store: &Store, stalls: &mut Stalls) -> NotificationLease {
    match store.pull_notification().expect("pull_notification") {
        Some(note) => note,
        None => stalls.wait("notification", |t| {
            store
                .pull_notification_timeout(t)
                .expect("pull_notification_timeout")
        }),
    }
}

/// `create`: one job, durable and fast.
fn bench_create(c: &mut Criterion) {
    let mut group = c.benchmark_group("create");
    for (name, durability) in MODES {
        // Criterion calls the closure below several times and only if the id passes the
        // filter: set up lazily, once.
        let mut setup = None;
        let mut n = 0u64;
        group.bench_function(name, |b| {
            let (_dir, store) = setup.get_or_insert_with(|| {
                let dir = bench_dir("create");
                let store = open(&dir, durability);
                settle();
                (dir, store)
            });
            b.iter(|| {
                n += 1;
                store.create(&request(n)).expect("create")
            })
        });
    }
    group.finish();
}

/// A store holding a backlog of pending jobs, and the fast handle that creates them.
struct Backlog {
    size: u64,
    filler: Store,
    dir: TempDir,
}

impl Backlog {
    fn new(size: u64) -> Backlog {
        let dir = bench_dir(&format!("pull-{}", label(size)));
        let filler = open(&dir, Durability::Fast);
        let started = Instant::now();
        fill(&filler, size);
        settle();
        eprintln!(
            "created a backlog of {size} jobs in {:.1?} (fast mode) in {}",
            started.elapsed(),
            dir.path().display()
        );
        Backlog { size, filler, dir }
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        let started = Instant::now();
        let _ = std::fs::remove_dir_all(self.dir.path());
        eprintln!(
            "removed the {} store in {:.1?}",
            label(self.size),
            started.elapsed()
        );
    }
}

/// `pull_fulfil` and `pull_release` at each backlog size, durable and fast. One store per
/// backlog size serves all of them (each keeps it at its nominal size); it is created when the
/// first benchmark that needs it runs, so a filter that excludes them all skips it.
fn bench_pull(c: &mut Criterion) {
    let sizes = backlog_sizes();
    let mut backlogs: Vec<Option<Backlog>> = sizes.iter().map(|_| None).collect();

    let mut group = c.benchmark_group("pull_fulfil");
    for (name, durability) in MODES {
        for (&size, backlog) in sizes.iter().zip(backlogs.iter_mut()) {
            let chunk = (size / 10).max(1);
            let mut stalls = Stalls::default();
            let mut store = None;
            group.bench_function(BenchmarkId::new(name, label(size)), |b| {
                let bl = backlog.get_or_insert_with(|| Backlog::new(size));
                let store = store.get_or_insert_with(|| open(&bl.dir, durability));
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(chunk);
                        fill(&bl.filler, n); // untimed: the backlog is now size + n
                        settle();
                        let waited = stalls.waited;
                        let t = Instant::now();
                        for _ in 0..n {
                            pull_work(store, &mut stalls)
                                .fulfill(b"42")
                                .expect("fulfill");
                        }
                        timed += t.elapsed() - (stalls.waited - waited);
                        left -= n;
                    }
                    timed
                })
            });
            stalls.report(&format!("pull_fulfil/{name}/{}", label(size)));
        }
    }
    group.finish();

    let mut group = c.benchmark_group("pull_release");
    for (name, durability) in MODES {
        for (&size, backlog) in sizes.iter().zip(backlogs.iter_mut()) {
            let mut stalls = Stalls::default();
            let mut store = None;
            let mut since_retire = 0u64;
            group.bench_function(BenchmarkId::new(name, label(size)), |b| {
                let bl = backlog.get_or_insert_with(|| Backlog::new(size));
                let store = store.get_or_insert_with(|| open(&bl.dir, durability));
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let waited = stalls.waited;
                        let t = Instant::now();
                        pull_work(store, &mut stalls).release().expect("release");
                        timed += t.elapsed() - (stalls.waited - waited);
                        since_retire += 1;
                        if since_retire == RELEASE_RETIRE_EVERY {
                            // Untimed: retire the much-released front job, keep the backlog.
                            since_retire = 0;
                            pull_work(store, &mut stalls)
                                .fulfill(b"42")
                                .expect("fulfill");
                            fill(&bl.filler, 1);
                        }
                    }
                    timed
                })
            });
            stalls.report(&format!("pull_release/{name}/{}", label(size)));
        }
    }
    group.finish();
}

/// `queue`: one new target on an existing (pending) job; the targets are spread over
/// [`SMALL_STORE`] jobs so that no job collects many.
fn bench_queue(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue");
    for (name, durability) in MODES {
        let mut setup = None;
        let mut n = 0u64;
        group.bench_function(name, |b| {
            let (_dir, store, ids) = setup.get_or_insert_with(|| {
                let dir = bench_dir("queue");
                let ids = fill(&open(&dir, Durability::Fast), SMALL_STORE);
                let store = open(&dir, durability);
                settle();
                (dir, store, ids)
            });
            b.iter(|| {
                n += 1;
                let id = &ids[n as usize % ids.len()];
                store
                    .queue(id, &json!({"email": format!("user{n}@example.com")}))
                    .expect("queue")
            })
        });
    }
    group.finish();
}

/// `notification`: pull_notification + done on a fulfilled job with one target. Each chunk's
/// notifications are prepared untimed (create, queue, fulfil through a fast handle).
fn bench_notification(c: &mut Criterion) {
    let mut group = c.benchmark_group("notification");
    for (name, durability) in MODES {
        let mut setup = None;
        let mut stalls = Stalls::default();
        let mut serial = 0u64;
        group.bench_function(name, |b| {
            let (_dir, filler, store) = setup.get_or_insert_with(|| {
                let dir = bench_dir("notification");
                let filler = open(&dir, Durability::Fast);
                let store = open(&dir, durability);
                (dir, filler, store)
            });
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = left.min(1_000);
                    for _ in 0..n {
                        serial += 1;
                        let id = filler.create(&request(serial)).expect("create");
                        let target = json!({"email": format!("user{serial}@example.com")});
                        filler.queue(&id, &target).expect("queue");
                        filler.fulfill(&id, b"42").expect("fulfill");
                    }
                    settle();
                    let waited = stalls.waited;
                    let t = Instant::now();
                    for _ in 0..n {
                        let note = pull_notification(store, &mut stalls);
                        let delivered = note.waiting().to_vec();
                        note.done(&delivered).expect("done");
                    }
                    timed += t.elapsed() - (stalls.waited - waited);
                    left -= n;
                }
                timed
            })
        });
        stalls.report(&format!("notification/{name}"));
    }
    group.finish();
}

/// `get` and `counts` on a store of [`SMALL_STORE`] jobs: a quarter fulfilled, every job with
/// one waiting target. Reads only, so one durability mode.
fn bench_reads(c: &mut Criterion) {
    let mut setup = None;
    let make = || {
        let dir = bench_dir("reads");
        let store = open(&dir, Durability::Fast);
        let ids = fill(&store, SMALL_STORE);
        for (i, id) in ids.iter().enumerate() {
            store
                .queue(id, &json!({"email": format!("user{i}@example.com")}))
                .expect("queue");
            if i.is_multiple_of(4) {
                store.fulfill(id, b"42").expect("fulfill");
            }
        }
        settle();
        (dir, store, ids)
    };
    let label = label(SMALL_STORE);
    let mut n = 0usize;
    c.bench_function(&format!("get/{label}"), |b| {
        let (_dir, store, ids) = setup.get_or_insert_with(make);
        b.iter(|| {
            n += 1;
            store.get(&ids[n % ids.len()]).expect("get")
        })
    });
    c.bench_function(&format!("counts/{label}"), |b| {
        let (_dir, store, _ids) = setup.get_or_insert_with(make);
        b.iter(|| store.counts().expect("counts"))
    });
}

/// Small samples, so that the whole file runs in a few minutes. Command-line options
/// (`--sample-size`, `--measurement-time`, `--warm-up-time`, `--quick`) override these:
/// `criterion_group!` applies them afterwards.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_create, bench_pull, bench_queue, bench_notification, bench_reads
}
criterion_main!(benches);
