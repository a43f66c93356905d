//! The deployment core on arbitrary input. With an even first byte, the rest is UTF-8
//! read as a `.gitlab-ci.yml` holding `.slipway` settings: parsing must not panic and an
//! invalid file must report at least one error. With an odd first byte, the bytes choose
//! a plan (strategy, instance counts, approval, warm release) and then a sequence of
//! events in any order, values and timing: the machine must not panic, must emit nothing
//! once finished, and must never route to a new instance it was not told is ready.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_core::deploy::health::Transition;
use slipway_core::deploy::machine::{Action, Deployment, Event, Plan, Slot};
use slipway_core::deploy::settings::{parse_settings, Amount, CanaryStep, HttpCheck, Strategy};
use slipway_core::source::MemoryLoader;
use std::collections::HashSet;

fn settings(text: &str) {
    let loader = MemoryLoader::new().with(".gitlab-ci.yml", text);
    let loaded = slipway_core::load_pipeline(&loader, ".gitlab-ci.yml", &|_| None);
    if let Some(tree) = &loaded.tree {
        if let Err(d) = parse_settings(tree) {
            assert!(!d.is_empty());
            let _ = d.render(&loaded.sources);
        }
    }
}

fn strategy(b: u8, c: u8) -> Strategy {
    match b % 4 {
        0 => Strategy::Recreate,
        1 => Strategy::BlueGreen {
            keep_warm_ms: u64::from(c) * 10,
            pre_switch_checks: if c % 2 == 0 {
                Vec::new()
            } else {
                vec![HttpCheck { path: "/".into(), status: None }]
            },
        },
        2 => Strategy::Rolling {
            max_surge: Amount::Count(u32::from(c % 4)),
            max_unavailable: if c & 0x10 == 0 { Amount::Count(u32::from(c / 64)) } else { Amount::Percent(u32::from(c % 101)) },
        },
        _ => Strategy::Canary {
            steps: vec![CanaryStep::Weight(c % 100 + 1), CanaryStep::Pause(if c % 3 == 0 { None } else { Some(u64::from(c)) })],
            keep_warm_ms: u64::from(c),
        },
    }
}

fn machine(data: &[u8]) {
    if data.len() < 5 {
        return;
    }
    let instances = u32::from(data[2] % 6) + 1;
    let plan = Plan {
        strategy: strategy(data[0], data[1]),
        instances,
        old_instances: (0..u32::from(data[3] % 6)).collect(),
        needs_approval: data[4] & 1 == 1,
        new_is_warm: data[4] & 2 == 2,
    };
    let mut m = Deployment::new(plan);
    let mut ready: HashSet<(Slot, u32)> = m.plan().old_instances.iter().map(|&i| (Slot::Old, i)).collect();
    if m.plan().new_is_warm {
        ready.extend((0..instances).map(|i| (Slot::New, i)));
    }
    let mut now = 0u64;
    let check = |actions: Vec<Action>, finished_before: bool, ready: &HashSet<(Slot, u32)>| {
        if finished_before {
            assert!(actions.is_empty(), "actions after the end: {actions:?}");
        }
        for a in actions {
            if let Action::Route(t) = a {
                // The old release is taken as ready; a new instance only once reported so.
                for e in t.iter().filter(|e| e.slot == Slot::New) {
                    assert!(ready.contains(&(e.slot, e.index)), "routed to {e:?}, not ready");
                }
            }
        }
    };
    let a = m.start(now);
    check(a, false, &ready);
    for chunk in data[5..].chunks(3) {
        let (k, x, y) = (chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0));
        let slot = if x & 1 == 0 { Slot::New } else { Slot::Old };
        let index = u32::from(y % 8);
        now += u64::from(x);
        let ev = match k % 14 {
            0 => Event::Approved,
            1 => Event::Rejected { reason: "r".into() },
            2 => Event::Cancel,
            3 => Event::Abort { reason: "a".into() },
            4 => Event::Promote,
            5 => Event::Started { slot, indices: vec![index] },
            6 => Event::StartFailed { slot, reason: "s".into() },
            7 => {
                ready.insert((slot, index));
                Event::Health { slot, index, transition: Transition::Ready }
            }
            8 => {
                ready.remove(&(slot, index));
                Event::Health { slot, index, transition: Transition::Failed { reason: "f".into() } }
            }
            9 => Event::ChecksPassed,
            10 => Event::ChecksFailed { reason: "c".into() },
            11 => Event::Routed,
            12 => Event::Stopped { slot, indices: vec![index] },
            _ => Event::Tick,
        };
        let finished = m.is_finished();
        let a = m.handle(ev, now);
        check(a, finished, &ready);
        let _ = m.status();
    }
}

fuzz_target!(|data: &[u8]| {
    match data.first() {
        Some(b) if b % 2 == 0 => {
            if let Ok(text) = std::str::from_utf8(&data[1..]) {
                settings(text);
            }
        }
        Some(_) => machine(&data[1..]),
        None => {}
    }
});
