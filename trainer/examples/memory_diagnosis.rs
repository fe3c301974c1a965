//! Where a memory model's closed-loop failures come from, episode by episode.
//!
//! For each episode of a task it runs the checkpoint three ways on the CPU:
//! 1. the training forward over the expert's recorded episode (what the loss saw);
//! 2. the streaming path (the checkpoint's KV cache format and budget, its memory bank) over the
//!    same recorded frames, teacher-forced: it must agree with 1 (the paths are equal up to the
//!    cache's quantization) and shows whether the cue survives eviction on expert frames;
//! 3. the streaming path driving the simulator (closed loop, the first action of each chunk),
//!    as `edgevla demo` does: how far the arm drifts from its rest pose before the go step,
//!    the cue head's answer at the go step and after it (the first wrong answer after the go
//!    step: when, and where the arm was), and the final distance to the pad; at the last step
//!    also the cue head's probabilities and the arm's distance to every pad (is a miss near
//!    the cued pad a pose between it and the runner-up, the squared error's answer under doubt?).
//!
//! ```sh
//! cargo run --release -p edgevla-trainer --example memory_diagnosis -- \
//!     models/edge-long-bins memory-long-train 5000000 8
//! ```
//! Arguments: checkpoint folder, task (a shipped name), first seed, episodes, and optionally
//! `closed` to run the closed loop only (3.; the long task's training forward is slow on a CPU).

use std::error::Error;
use std::path::PathBuf;

use burn::backend::NdArray;
use burn::tensor::Tensor;
use runtime::model::{StepInput, StepOutput, Stream, Vla};
use sim::training_preprocess;
use sim::{Sim, TaskConfig};
use trainer::data::{StepWeights, episode_batch};
use vision::Preprocessor;

type B = NdArray<f32>;
type Res<T> = Result<T, Box<dyn Error>>;

fn host(t: Tensor<B, 3>) -> Res<Vec<f32>> {
    Ok(t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?)
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len())
        .max_by(|&a, &b| v[a].total_cmp(&v[b]))
        .unwrap_or(0)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// One streaming step on `step`'s frames and proprio (its patches made in `patches`).
fn stream_step(
    model: &Vla<B>,
    stream: &mut Stream<B>,
    pre: &mut Preprocessor,
    patches: &mut Vec<f32>,
    step: &sim::Step,
) -> Res<StepOutput<B>> {
    patches.clear();
    step.append_patches(pre, patches)?;
    Ok(model.forward_step(
        &StepInput {
            patches,
            camera_present: &step.camera_present,
            proprio: &step.proprio,
        },
        stream,
    )?)
}

/// Teacher-forced: training forward and streaming steps over the recorded episode.
fn teacher_forced(model: &Vla<B>, task: &TaskConfig, seed: u64) -> Res<String> {
    let device = Default::default();
    let c = model.config();
    let episode = sim::Episode::generate(task, seed)?;
    let batch = episode_batch(
        task,
        &[seed],
        StepWeights::default(),
        &training_preprocess(),
    )?;
    let instructions: Vec<&str> = batch.instructions.iter().map(String::as_str).collect();
    let out = model.forward_train(&batch.model_input(&instructions), &device)?;
    let actions = host(out.actions)?;
    let cue = host(out.cue_logits.ok_or("the model has no cue head")?)?;
    let (k, ho) = (c.cue_classes, c.action_head_outputs());
    let mut stream = model.new_stream(&c.kv_cache, &device)?;
    model.start_episode(&episode.instruction, &mut stream)?;
    let (mut cue_diff, mut action_diff) = (0f32, 0f32);
    let (mut train_right, mut stream_right, mut labeled) = (0, 0, 0);
    let mut pre = Preprocessor::new(training_preprocess())?;
    let mut patches = Vec::new();
    for (t, step) in episode.steps.iter().enumerate() {
        let o = stream_step(model, &mut stream, &mut pre, &mut patches, step)?;
        let logits = o.cue_logits.ok_or("no cue logits")?;
        let trained = &cue[t * k..(t + 1) * k];
        cue_diff = cue_diff.max(max_abs_diff(&logits, trained));
        action_diff = action_diff.max(max_abs_diff(
            &o.action.values,
            &c.decode_actions(&actions[t * ho..(t + 1) * ho]),
        ));
        if t >= episode.cue_steps.start {
            labeled += 1;
            train_right += usize::from(argmax(trained) == episode.target);
            stream_right += usize::from(argmax(&logits) == episode.target);
        }
    }
    Ok(format!(
        "cue {:?}, go {}, pad {} | teacher-forced: cue right after the cue {train_right}/{labeled} \
         (training forward), {stream_right}/{labeled} (streaming); max |diff| cue logits \
         {cue_diff:.2e}, actions {action_diff:.2e}",
        episode.cue_steps, episode.go_step, episode.target
    ))
}

/// Closed loop: the streaming path drives the simulator.
fn closed_loop(model: &Vla<B>, task: &TaskConfig, seed: u64) -> Res<String> {
    let device = Default::default();
    let c = model.config();
    let mut pre = Preprocessor::new(training_preprocess())?;
    let mut sim = Sim::new(task, seed)?;
    let info = sim.info();
    let mut stream = model.new_stream(&c.kv_cache, &device)?;
    model.start_episode(&info.instruction, &mut stream)?;
    let rest = task.arm.rest_xy;
    let mut drift = 0f64;
    let mut cue_at_go = None;
    // The first step after the go step whose cue answer is wrong, and how far the arm then is
    // from the cued pad and from the pad it names.
    let mut first_wrong: Option<(usize, f64, f64)> = None;
    let (mut right, mut after) = (0, 0);
    // The cue head's answer whenever it changes from the cue on, as (step, pad).
    let mut changes: Vec<(usize, usize)> = Vec::new();
    let mut patches = Vec::new();
    let mut last_logits: Vec<f32>;
    // The distance to the cued pad over the last 20 steps (is the arm still on its way?).
    let mut tail: Vec<f64> = Vec::new();
    loop {
        let step = sim.observe();
        let t = sim.t();
        let o = stream_step(model, &mut stream, &mut pre, &mut patches, &step)?;
        last_logits = o.cue_logits.ok_or("no cue logits")?;
        let answer = argmax(&last_logits);
        if t >= info.cue_steps.start {
            after += 1;
            right += usize::from(answer == info.target);
            if changes.last().is_none_or(|&(_, pad)| pad != answer) {
                changes.push((t, answer));
            }
        }
        if t == info.go_step {
            cue_at_go = Some(answer);
        }
        if t > info.go_step && answer != info.target && first_wrong.is_none() {
            first_wrong = Some((
                t - info.go_step,
                sim.distance_to_pad(info.target),
                sim.distance_to_pad(answer),
            ));
        }
        if t < info.go_step {
            let [x, y] = sim.ee_xy();
            drift = drift.max((f64::from(x) - rest[0]).hypot(f64::from(y) - rest[1]));
        }
        tail.push(sim.distance_to_pad(info.target));
        if tail.len() > 20 {
            tail.remove(0);
        }
        if sim.is_last() {
            break;
        }
        sim.step(&o.action.values)?;
    }
    let tail = tail
        .iter()
        .step_by(5)
        .map(|d| format!("{:.1}", d * 100.0))
        .collect::<Vec<_>>()
        .join(", ");
    let max = last_logits
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = last_logits.iter().map(|z| (z - max).exp()).collect();
    let total: f32 = exp.iter().sum();
    let last = (0..exp.len())
        .map(|k| {
            format!(
                "pad {k}{}: p {:.2}, {:.1} cm",
                if k == info.target { " (cued)" } else { "" },
                exp[k] / total,
                sim.distance_to_pad(k) * 100.0
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    // Steps counted from the cue's last step, as the cue age is.
    let since = |t: usize| t as i64 - info.cue_steps.end as i64 + 1;
    let timeline = format!(
        "cue at steps {:?} on pad {}, go at +{}; the cue head's answer (step: pad): {}; decoys \
         (step: pad): {}",
        info.cue_steps,
        info.target,
        since(info.go_step),
        changes
            .iter()
            .map(|&(t, pad)| format!("+{}: {pad}", since(t)))
            .collect::<Vec<_>>()
            .join(", "),
        info.decoys
            .iter()
            .map(|d| format!("{:+}: {}", since(d.steps.start), d.pad))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(format!(
        "closed loop: drift from rest before go {:.1} cm | cue head at go {} | right after the \
         cue {right}/{after} (first wrong after go: {}) | final distance to the pad {:.1} cm | \
         success {}\n  cm to the cued pad at the last 20 steps (every 5th): {tail}\n  last step: {last}\n  {timeline}",
        drift * 100.0,
        cue_at_go.map_or("-".to_string(), |a| {
            if a == info.target { "right" } else { "wrong" }.to_string()
        }),
        first_wrong.map_or("none".to_string(), |(k, cued, named)| format!(
            "go+{k}, the arm {:.1} cm from the cued pad, {:.1} cm from the named one",
            cued * 100.0,
            named * 100.0
        )),
        sim.distance_to_pad(info.target) * 100.0,
        sim.success()
    ))
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: memory_diagnosis CHECKPOINT [TASK] [FIRST_SEED] [EPISODES] [closed]";
    let dir = PathBuf::from(args.first().ok_or(usage)?);
    let task_name = args.get(1).map_or("memory-long-train", String::as_str);
    let first: u64 = args.get(2).map_or(Ok(5_000_000), |s| s.parse())?;
    let episodes: u64 = args.get(3).map_or(Ok(4), |s| s.parse())?;
    let closed_only = match args.get(4).map(String::as_str) {
        None => false,
        Some("closed") => true,
        Some(_) => return Err(usage.into()),
    };
    let device = Default::default();
    let model = runtime::checkpoint::load::<B>(&dir, None, &device)?;
    let preset =
        configs::task_preset(task_name).ok_or_else(|| format!("no shipped task {task_name}"))?;
    let mut task = TaskConfig::from_toml(preset.text)?;
    // The closed loop applies the model's actions in the space it was trained in (its
    // checkpoint's task.toml; joint velocities when it has none).
    if let Ok(text) = std::fs::read_to_string(dir.join("task.toml")) {
        task.action = TaskConfig::from_toml(&text)?.action;
    }
    for seed in first..first + episodes {
        if closed_only {
            println!("seed {seed}:");
        } else {
            println!("seed {seed}: {}", teacher_forced(&model, &task, seed)?);
        }
        println!("  {}", closed_loop(&model, &task, seed)?);
    }
    Ok(())
}
