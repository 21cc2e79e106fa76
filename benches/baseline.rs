//! Raw-filesystem baseline and the jobdir driver of `bench/compare/run` (not a criterion bench).
//!
//! ```text
//! baseline raw      DIR N durable|fast          # minimal syscalls of N job lifecycles: N creates, then N drains
//! baseline create   DIR N durable|fast          # create N jobs (library)
//! baseline drain    DIR durable|fast            # pull+fulfil until empty (one worker process)
//! baseline latency  DIR SAMPLES WORKERS inotify|poll|instance POLL_MS   # instance: jobs for an instance, pulled as it
//! baseline notify   DIR N durable|fast          # set up N fulfilled jobs with a target, drain
//! baseline pullcost DIR K durable|fast          # pull+fulfil K jobs from an existing backlog
//! ```
//!
//! Every mode prints one line of `key=value` pairs; times are wall-clock epoch seconds so that
//! the harness can combine several worker processes (`start`, `end`, `count`).
//! Build: `cargo bench --bench baseline --no-run`; run the printed binary with the arguments.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jobdir::{Durability, Store};
use serde_json::json;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn durability(s: &str) -> Durability {
    match s {
        "durable" => Durability::Durable,
        "fast" => Durability::Fast,
        _ => panic!("durability must be durable or fast, not {s:?}"),
    }
}

fn open(dir: &str, d: Durability) -> Store {
    Store::builder(dir)
        .durability(d)
        .open()
        .expect("open store")
}

fn fsync_dir(dir: &Path) {
    let f = File::open(dir).expect("open dir");
    f.sync_all().expect("fsync dir");
}

/// write tmp (+fsync), rename into place (+directory fsync).
fn atomic_write(dir: &Path, name: &str, data: &[u8], durable: bool) {
    let tmp = dir.join(format!(".tmp-{name}"));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .expect("create tmp");
    f.write_all(data).expect("write");
    if durable {
        f.sync_all().expect("fsync file");
    }
    drop(f);
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
    if durable {
        fsync_dir(dir);
    }
}

/// The minimal lifecycle: request (write+fsync+rename+dir fsync), lock (O_EXCL create),
/// result (write+fsync+rename+dir fsync), lock unlink.
fn raw(dir: &str, n: u64, durable: bool) {
    let root = PathBuf::from(dir);
    let (jobs, locks, results) = (root.join("jobs"), root.join("locks"), root.join("results"));
    for d in [&jobs, &locks, &results] {
        std::fs::create_dir_all(d).unwrap();
    }
    let start = now();
    let t = Instant::now();
    // Phase 1, "create": every request written durably (as a job store's create).
    for i in 0..n {
        let name = format!("{i:016}");
        let req = format!("{{\"calculate\":\"{i}+{i}\",\"n\":{i}}}");
        atomic_write(&jobs, &name, req.as_bytes(), durable);
    }
    let create_secs = t.elapsed().as_secs_f64();
    // Phase 2, "drain": per job the lock (O_EXCL create), the read of the request, the result
    // (write, fsync, rename, directory fsync) and the unlock (unlink).
    let t2 = Instant::now();
    for i in 0..n {
        let name = format!("{i:016}");
        let lock = locks.join(&name);
        let c = CString::new(lock.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; the fd is closed at once.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                0o600,
            )
        };
        assert!(fd >= 0, "lock create failed");
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        let req = std::fs::read(jobs.join(&name)).expect("read request");
        assert!(!req.is_empty());
        atomic_write(&results, &name, b"42", durable);
        std::fs::remove_file(&lock).unwrap();
    }
    let drain_secs = t2.elapsed().as_secs_f64();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "mode=raw durable={durable} count={n} start={start:.6} end={:.6} secs={secs:.4} \
         jobs_per_s={:.1} create_per_s={:.1} drain_per_s={:.1}",
        now(),
        n as f64 / secs,
        n as f64 / create_secs,
        n as f64 / drain_secs
    );
}

fn create(dir: &str, n: u64, d: Durability) {
    let store = open(dir, d);
    let start = now();
    let t = Instant::now();
    for i in 0..n {
        store
            .create(&json!({"calculate": format!("{i}+{i}"), "n": i}))
            .expect("create");
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "mode=create count={n} start={start:.6} end={:.6} secs={secs:.4} jobs_per_s={:.1}",
        now(),
        n as f64 / secs
    );
}

/// Pull+fulfil until the store has nothing pending for this handle.
fn drain(dir: &str, d: Durability) {
    let store = open(dir, d);
    let start = now();
    let t = Instant::now();
    let mut count = 0u64;
    let mut end = start;
    let mut last = t.elapsed();
    loop {
        let job = match store.pull_work().expect("pull_work") {
            Some(j) => j,
            // Nothing known: look once more briefly (file events may lag), then stop.
            None => match store
                .pull_work_timeout(Duration::from_millis(200))
                .expect("pull_work_timeout")
            {
                Some(j) => j,
                None => break,
            },
        };
        job.fulfill(b"42").expect("fulfill");
        count += 1;
        end = now();
        last = t.elapsed();
    }
    let secs = last.as_secs_f64();
    println!(
        "mode=drain count={count} start={start:.6} end={end:.6} secs={secs:.4} jobs_per_s={:.1}",
        count as f64 / secs.max(1e-9)
    );
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// create→pull wake-up latency with `workers` threads (each its own handle, so its own inotify
/// instance) blocked in `pull_work_timeout`. With `instance`, the jobs are created for an
/// instance and the workers pull as it (`pull_work_timeout_as`, no unallocated jobs): woken by
/// the instance's allocation entries, not the pending index.
fn latency(dir: &str, samples: usize, workers: usize, events: bool, poll_ms: u64, instance: bool) {
    let creator = open(dir, Durability::Fast);
    let me: jobdir::InstanceId = "w".parse().expect("instance name");
    let affinity = instance.then(|| jobdir::Affinity::new(me.clone()));
    if instance {
        creator.available(&me).expect("available");
    }
    let (tx, rx) = mpsc::channel::<(jobdir::JobId, Instant)>();
    let ready = Arc::new(Barrier::new(workers + 1));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut handles = Vec::new();
    for _ in 0..workers {
        let tx = tx.clone();
        let ready = Arc::clone(&ready);
        let stop = Arc::clone(&stop);
        let dir = dir.to_string();
        let affinity = affinity.clone();
        handles.push(std::thread::spawn(move || {
            let store = Store::builder(&dir)
                .durability(Durability::Fast)
                .file_events(events)
                .poll_interval(Duration::from_millis(poll_ms))
                .open()
                .expect("open");
            ready.wait();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // Longer than the poll interval, so the timeout never stands in for the poll.
                let slice = Duration::from_millis(500.max(2 * poll_ms));
                let pulled = match &affinity {
                    Some(who) => store.pull_work_timeout_as(who, slice),
                    None => store.pull_work_timeout(slice),
                };
                if let Some(job) = pulled.expect("pull") {
                    let at = Instant::now();
                    let id = job.id();
                    job.fulfill(b"1").expect("fulfill");
                    let _ = tx.send((id, at));
                }
            }
        }));
    }
    drop(tx);
    ready.wait();
    std::thread::sleep(Duration::from_millis(300)); // let every worker block
    let mut from_start = Vec::new();
    let mut from_return = Vec::new();
    for i in 0..samples {
        let t0 = Instant::now();
        let opts = match instance {
            true => jobdir::CreateOptions::default().instance(me.clone()),
            false => jobdir::CreateOptions::default(),
        };
        let id = creator.create_with(&json!({"n": i}), opts).expect("create");
        let t1 = Instant::now();
        let (got, at) = rx.recv_timeout(Duration::from_secs(30)).expect("a pull");
        assert_eq!(got, id);
        from_start.push(at.duration_since(t0).as_secs_f64() * 1e3);
        from_return.push(at.saturating_duration_since(t1).as_secs_f64() * 1e3);
        // Let the workers go back to sleep in the pull, and spread the creation's phase over
        // the poll interval (without file events the wait depends on it).
        let spread = if events { 13 } else { poll_ms.max(13) };
        std::thread::sleep(Duration::from_millis(20 + (i as u64 * 7919) % spread));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for h in handles {
        h.join().unwrap();
    }
    from_start.sort_by(f64::total_cmp);
    from_return.sort_by(f64::total_cmp);
    println!(
        "mode=latency workers={workers} events={events} instance={instance} poll_ms={poll_ms} samples={samples} \
         p50_ms={:.3} p99_ms={:.3} max_ms={:.3} p50_after_return_ms={:.3} p99_after_return_ms={:.3}",
        pct(&from_start, 0.5),
        pct(&from_start, 0.99),
        from_start[from_start.len() - 1],
        pct(&from_return, 0.5),
        pct(&from_return, 0.99),
    );
}

fn notify(dir: &str, n: u64, d: Durability) {
    let filler = open(dir, Durability::Fast);
    for i in 0..n {
        let id = filler.create(&json!({"n": i})).expect("create");
        filler
            .queue(&id, &json!({"email": format!("user{i}@example.com")}))
            .expect("queue");
        filler.fulfill(&id, b"42").expect("fulfill");
    }
    // SAFETY: sync(2) has no arguments.
    unsafe { libc::sync() };
    let store = open(dir, d);
    let start = now();
    let t = Instant::now();
    let mut count = 0u64;
    loop {
        let note = match store.pull_notification().expect("pull_notification") {
            Some(n) => n,
            None => match store
                .pull_notification_timeout(Duration::from_millis(200))
                .expect("pull_notification_timeout")
            {
                Some(n) => n,
                None => break,
            },
        };
        let delivered = note.waiting().to_vec();
        note.done(&delivered).expect("done");
        count += 1;
        if count == n {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "mode=notify count={count} start={start:.6} end={:.6} secs={secs:.4} jobs_per_s={:.1}",
        now(),
        count as f64 / secs
    );
}

/// Pull+fulfil `k` jobs from an existing backlog; per-job cost in µs.
fn pullcost(dir: &str, k: u64, d: Durability) {
    let t_open = Instant::now();
    let store = open(dir, d);
    let open_secs = t_open.elapsed().as_secs_f64();
    // First pull may build the index: time it separately.
    let t_first = Instant::now();
    store
        .pull_work()
        .expect("pull")
        .expect("a job")
        .fulfill(b"42")
        .expect("fulfill");
    let first_secs = t_first.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..k {
        store
            .pull_work()
            .expect("pull")
            .expect("a job")
            .fulfill(b"42")
            .expect("fulfill");
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "mode=pullcost count={k} open_s={open_secs:.3} first_pull_s={first_secs:.3} secs={secs:.4} us_per_job={:.1}",
        secs * 1e6 / k as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let a = |i: usize| -> &str { args.get(i).map(String::as_str).unwrap_or("") };
    match a(0) {
        "raw" => raw(a(1), a(2).parse().unwrap(), a(3) == "durable"),
        "create" => create(a(1), a(2).parse().unwrap(), durability(a(3))),
        "drain" => drain(a(1), durability(a(2))),
        "latency" => latency(
            a(1),
            a(2).parse().unwrap(),
            a(3).parse().unwrap(),
            a(4) != "poll",
            a(5).parse().unwrap(),
            a(4) == "instance",
        ),
        "notify" => notify(a(1), a(2).parse().unwrap(), durability(a(3))),
        "pullcost" => pullcost(a(1), a(2).parse().unwrap(), durability(a(3))),
        // `cargo bench` runs every bench target, passing criterion's options and filters:
        // without a mode of its own this program does nothing.
        m => eprintln!("baseline: no mode given ({m:?}); see the header of benches/baseline.rs"),
    }
}
