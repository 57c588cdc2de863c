//! CPU time and resident memory of the processes under test, read from `/proc` four times a
//! second by a background thread.
//!
//! A *group* is one service process (by pid) or every process with a given command name
//! (`postgres`: the server and all its backends; `tansu`: the broker). For each sample the group's
//! cumulative CPU ticks (user + system, summed over the processes seen so far, so backends that
//! come and go are counted while they live) and its summed `VmRSS` are stored; a scenario asks for
//! the usage between two instants. Peak RSS per scenario is the largest sampled `VmRSS` (a spike
//! shorter than 250 ms can be missed); `VmHWM` (the kernel's lifetime peak) is reported per
//! service as well.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use procfs::process::Process;
use serde::{Deserialize, Serialize};

/// How a group finds its processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// One process.
    Pid(u32),
    /// Every process whose `comm` is this name.
    Comm(String),
}

/// Usage of one group over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU seconds (user + system) spent in the window.
    pub cpu_seconds: f64,
    /// Average CPU over the window in percent of one core (the machine has `nproc` x 100 %).
    pub cpu_percent: f64,
    /// Largest sampled resident set in the window, MiB (summed over the group's processes;
    /// for PostgreSQL this counts shared buffers once per backend, so it is not reported).
    pub peak_rss_mb: f64,
    /// Kernel's lifetime peak resident set (`VmHWM`) at the end of the window, MiB; single
    /// processes only.
    pub lifetime_peak_rss_mb: f64,
}

/// One reading of a process, or of a group (CPU cumulative since its baseline, RSS summed, HWM the
/// largest).
#[derive(Debug, Clone, Copy, Default)]
struct GroupSample {
    cpu_ticks: u64,
    rss_kb: u64,
    hwm_kb: u64,
}

#[derive(Debug, Default)]
struct State {
    groups: Vec<(String, Selector)>,
    /// Last ticks seen per (group, pid), and the cumulative ticks per group.
    last_ticks: HashMap<(String, u32), u64>,
    cumulative: HashMap<String, u64>,
    samples: Vec<(f64, BTreeMap<String, GroupSample>)>,
}

/// The background sampler; stops when dropped.
#[derive(Debug)]
pub struct Sampler {
    started: Instant,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    ticks_per_second: f64,
}

impl Sampler {
    /// Starts sampling (no groups yet).
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("procstat".to_owned())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        sample_once(&state, started.elapsed().as_secs_f64());
                        std::thread::sleep(Duration::from_millis(250));
                    }
                })
                .ok()
        };
        Self {
            started,
            state,
            stop,
            thread,
            ticks_per_second: procfs::ticks_per_second() as f64,
        }
    }

    /// Adds a group; its CPU counts from the next sample on.
    pub fn track(&self, name: impl Into<String>, selector: Selector) {
        let name = name.into();
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.groups.retain(|(existing, _)| *existing != name);
        state.groups.push((name, selector));
    }

    /// Seconds since the sampler started (the clock of [`Sampler::usage`]).
    pub fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Takes a sample right now (so a window's edges are exact).
    pub fn sample_now(&self) {
        sample_once(&self.state, self.now());
    }

    /// Usage of every group between `from` and `to` (seconds on [`Sampler::now`]'s clock).
    pub fn usage(&self, from: f64, to: f64) -> BTreeMap<String, Usage> {
        let state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let at_or_before = |t: f64| state.samples.iter().rev().find(|(time, _)| *time <= t);
        let at_or_after = |t: f64| state.samples.iter().find(|(time, _)| *time >= t);
        let (Some(first), Some(last)) = (
            at_or_before(from).or_else(|| state.samples.first()),
            at_or_after(to).or_else(|| state.samples.last()),
        ) else {
            return BTreeMap::new();
        };
        let window = (last.0 - first.0).max(1e-9);
        let mut usage = BTreeMap::new();
        for (name, end) in &last.1 {
            let start_ticks = first.1.get(name).map_or(0, |sample| sample.cpu_ticks);
            let cpu_seconds = end.cpu_ticks.saturating_sub(start_ticks) as f64 / self.ticks_per_second;
            let peak_rss_kb = state
                .samples
                .iter()
                .filter(|(time, _)| *time >= first.0 && *time <= last.0)
                .filter_map(|(_, groups)| groups.get(name).map(|sample| sample.rss_kb))
                .max()
                .unwrap_or(0);
            usage.insert(
                name.clone(),
                Usage {
                    cpu_seconds,
                    cpu_percent: 100.0 * cpu_seconds / window,
                    peak_rss_mb: peak_rss_kb as f64 / 1024.0,
                    lifetime_peak_rss_mb: end.hwm_kb as f64 / 1024.0,
                },
            );
        }
        usage
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn sample_once(state: &Mutex<State>, now: f64) {
    let groups = {
        let state = state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.groups.clone()
    };
    let by_comm = if groups.iter().any(|(_, selector)| matches!(selector, Selector::Comm(_))) {
        processes_by_comm()
    } else {
        HashMap::new()
    };
    let mut readings: Vec<(String, Vec<(u32, GroupSample)>)> = Vec::new();
    for (name, selector) in &groups {
        let pids: Vec<u32> = match selector {
            Selector::Pid(pid) => vec![*pid],
            Selector::Comm(comm) => by_comm.get(comm).cloned().unwrap_or_default(),
        };
        let found = pids
            .into_iter()
            .filter_map(|pid| read_process(pid).map(|reading| (pid, reading)))
            .collect();
        readings.push((name.clone(), found));
    }

    let mut state = state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut sample = BTreeMap::new();
    for (name, processes) in readings {
        // The processes present at a group's first sample are its baseline.
        let first_sample = !state.cumulative.contains_key(&name);
        let mut group = GroupSample::default();
        let mut added = 0;
        for (pid, reading) in processes {
            let key = (name.clone(), pid);
            let previous = state.last_ticks.insert(key, reading.cpu_ticks);
            added += match previous {
                Some(previous) => reading.cpu_ticks.saturating_sub(previous),
                // A process seen for the first time: its whole CPU counts (a new backend), unless
                // it is part of the group's baseline.
                None if first_sample => 0,
                None => reading.cpu_ticks,
            };
            group.rss_kb += reading.rss_kb;
            group.hwm_kb = group.hwm_kb.max(reading.hwm_kb);
        }
        let cumulative = state.cumulative.entry(name.clone()).or_default();
        *cumulative += added;
        group.cpu_ticks = *cumulative;
        sample.insert(name, group);
    }
    state.samples.push((now, sample));
}

/// utime + stime, VmRSS and VmHWM of `pid`; `None` once it has exited.
fn read_process(pid: u32) -> Option<GroupSample> {
    let process = Process::new(i32::try_from(pid).ok()?).ok()?;
    let stat = process.stat().ok()?;
    let status = process.status().ok();
    Some(GroupSample {
        cpu_ticks: stat.utime + stat.stime,
        rss_kb: status.as_ref().and_then(|status| status.vmrss).unwrap_or(0),
        hwm_kb: status.and_then(|status| status.vmhwm).unwrap_or(0),
    })
}

fn processes_by_comm() -> HashMap<String, Vec<u32>> {
    let mut found: HashMap<String, Vec<u32>> = HashMap::new();
    for stat in procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|process| process.stat().ok())
    {
        if let Ok(pid) = u32::try_from(stat.pid) {
            found.entry(stat.comm).or_default().push(pid);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_process_is_measured() {
        let sampler = Sampler::start();
        sampler.track("self", Selector::Pid(std::process::id()));
        sampler.sample_now();
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert_ne!(x, 1);
        sampler.sample_now();
        let usage = sampler.usage(0.0, sampler.now());
        let own = usage.get("self").expect("own usage");
        assert!(own.peak_rss_mb > 0.0);
        assert!(own.cpu_seconds > 0.0, "{own:?}");
    }
}
