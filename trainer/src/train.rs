//! The training loop on one device: AdamW on the mean squared error between the action chunks
//! the model predicts at every frame-step (`Vla::forward_train`, one forward pass per batch)
//! and the expert's, weighted per step, plus (for a model with a cue-recall head) a
//! cross-entropy loss on the cue class at the steps that have one.
//!
//! Data comes from a caller-supplied closure returning a [`Batch`] per iteration, so the same
//! loop trains on the synthetic task, on recorded data, or on a fixed batch in tests. Ring
//! attention across devices (`runtime::ring`) is not wired into this loop yet.

use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use runtime::flash::TrainAttention;
use runtime::host::float_tensor;
use runtime::model::{ActionBins, TrainBatch, Vla, VlaConfig};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

fn default_weight_decay() -> f64 {
    1e-4
}

/// Optimizer and schedule settings. Unknown keys are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps.
    pub iterations: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Linear warm-up iterations before the cosine decay to 10% of the peak.
    #[serde(default)]
    pub warmup: usize,
    /// AdamW decoupled weight decay.
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    /// Clip the gradient norm to this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_clip_norm: Option<f64>,
    /// Weight of the cue-recall cross-entropy relative to the action loss (0: not trained;
    /// needs a model with `cue_classes > 0` to matter).
    #[serde(default)]
    pub cue_loss_weight: f64,
    /// The per-value action error: `mse` (squared, the default) or `l1` (absolute).
    #[serde(default)]
    pub action_loss: ActionLoss,
}

/// How an action value's error enters the loss.
///
/// Under uncertainty between goals (which pad the cue named), the squared error's minimizer is
/// the mean of the goals' commands, a pose between them; the absolute error's is the median,
/// the command of the likelier goal when one holds more than half the probability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionLoss {
    /// Mean squared error.
    #[default]
    Mse,
    /// Mean absolute error.
    L1,
}

impl TrainConfig {
    /// Checks the values are usable.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad key.
    pub fn validate(&self) -> Result<()> {
        if self.iterations == 0 {
            return Err(Error::config("iterations", "must be ≥ 1"));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::config(
                "learning_rate",
                "must be a positive finite number",
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::config("weight_decay", "must be a finite number ≥ 0"));
        }
        if !(self.cue_loss_weight.is_finite() && self.cue_loss_weight >= 0.0) {
            return Err(Error::config(
                "cue_loss_weight",
                "must be a finite number ≥ 0",
            ));
        }
        if let Some(clip) = self.grad_clip_norm
            && !(clip.is_finite() && clip > 0.0)
        {
            return Err(Error::config(
                "grad_clip_norm",
                "must be a positive finite number",
            ));
        }
        Ok(())
    }

    /// Learning rate at `iteration`: linear warm-up, then cosine decay to 10% of the peak.
    pub fn learning_rate_at(&self, iteration: usize) -> f64 {
        let peak = self.learning_rate;
        if iteration < self.warmup {
            return peak * (iteration + 1) as f64 / self.warmup as f64;
        }
        let span = self.iterations.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((iteration - self.warmup) as f64 / span).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        peak * (0.1 + 0.9 * cosine)
    }
}

/// One training batch, host-side (see `runtime::model::TrainBatch` for the layouts).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    /// One instruction per episode.
    pub instructions: Vec<String>,
    /// Frame-steps per episode.
    pub steps: usize,
    /// `[batch, steps, n_cameras, patches_per_camera, patch_dim]`.
    pub patches: Vec<f32>,
    /// `[batch, steps, n_cameras]`.
    pub camera_present: Vec<bool>,
    /// `[batch, steps, proprio_dim]`.
    pub proprio: Vec<f32>,
    /// Expert action chunks `[batch, steps, horizon · action_dim]`.
    pub actions: Vec<f32>,
    /// Loss weight of every step `[batch, steps]` (empty: all 1).
    pub weights: Vec<f32>,
    /// Cue class of every step `[batch, steps]`, −1 where there is none yet (empty: no cue
    /// loss).
    pub cue_targets: Vec<i64>,
}

impl Batch {
    /// The model's inputs of this batch (`instructions` are [`Batch::instructions`] as
    /// `&str`, which the caller holds).
    #[must_use]
    pub fn model_input<'a>(&'a self, instructions: &'a [&'a str]) -> TrainBatch<'a> {
        TrainBatch {
            instructions,
            steps: self.steps,
            patches: &self.patches,
            camera_present: &self.camera_present,
            proprio: &self.proprio,
        }
    }
}

/// What a training run reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainReport {
    /// Loss at every iteration.
    pub losses: Vec<f64>,
    /// Where the host's time went.
    pub phases: PhaseTimes,
}

/// Host time per phase of the training loop, in seconds summed over the run. The device
/// works asynchronously: `forward`, `backward` and `step` are the time to build and queue that
/// work, `sync` the time spent waiting for the device when the losses are read back, `batch`
/// the time waiting for the next rendered batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseTimes {
    /// Waiting for the next batch.
    pub batch: f64,
    /// Embedding, forward pass and loss.
    pub forward: f64,
    /// Backward pass.
    pub backward: f64,
    /// Optimizer step.
    pub step: f64,
    /// Reading the losses back (waits for the device).
    pub sync: f64,
}

impl PhaseTimes {
    /// Sum of the phases.
    pub fn total(&self) -> f64 {
        self.batch + self.forward + self.backward + self.step + self.sync
    }
}

/// Device memory one training iteration needs, in bytes (an estimate, for a clear error
/// before the first iteration instead of an allocation failure inside the device's thread).
///
/// The terms: the activations kept for the backward pass, `24 · d_model + 5 · ffn_dim` f32
/// values per token and layer (calibrated on an H100 with score blocks of 2^26 values: the edge
/// model at 8 × 32, 32 × 32 and 8 × 256 frame-steps peaked at 4.5, 15.2 and 25.4 GB in
/// `nvidia-smi`), 30% more for a model with a memory (its three attentions per layer keep
/// rotated queries and keys twice and three partial results: edge-long at 8 × 128 peaked at
/// 20.4 GB, estimated 20.0 GB); the memory-efficient attention's score blocks (six of
/// [`runtime::flash::BLOCK_ELEMENTS`]); the uploaded batch; weights, gradients and the two
/// AdamW moments. With `shards` devices each holds its share of the tokens.
pub fn memory_estimate(c: &VlaConfig, batch: usize, steps: usize, shards: usize) -> u64 {
    let tokens = batch * c.train_sequence_len(steps);
    let tokens = tokens.div_ceil(shards.max(1)) as u64;
    let f32s = |n: u64| 4 * n;
    let (d, ffn, layers) = (c.d_model as u64, c.ffn_dim as u64, c.n_layers as u64);
    let activations = f32s(tokens * layers * (24 * d + 5 * ffn));
    let activations = if c.memory.is_some() {
        activations / 10 * 13
    } else {
        activations
    };
    let scratch = f32s(6 * runtime::flash::BLOCK_ELEMENTS as u64);
    let patches = (c.n_cameras * c.patches_per_camera * c.patch_dim) as u64;
    let inputs = f32s(3 * (batch * steps) as u64 * (patches + c.proprio_dim as u64));
    let hd = c.head_dim() as u64;
    let attention = d * hd * (2 * c.n_heads as u64 + 2 * c.n_kv_heads as u64);
    let params =
        layers * (attention + 3 * d * ffn) + patches / c.patches_per_camera.max(1) as u64 * d;
    activations + scratch + inputs + f32s(4 * params)
}

/// Iterations queued on the device between two read-backs of their losses. The host builds
/// the next iterations while the device runs the queued ones; a non-finite loss or a device
/// failure is found at the read-back, before anything is returned or saved.
pub const LOSS_READ_EVERY: usize = 4;

static DEVICE_PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs (once) a panic hook that records panics on burn/cubecl's device threads (named
/// `DS…`), chained before the previous hook. cubecl runs each device's work on its own thread
/// and swallows a panic there (an allocation failure, say): the computation goes on with
/// uninitialized buffers and no error reaches the caller. With the hook, [`train_resumable`]
/// stops at the next read-back with [`Error::Device`].
pub fn watch_device_threads() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|name| name.starts_with("DS"))
            {
                DEVICE_PANICKED.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

fn device_panicked() -> bool {
    DEVICE_PANICKED.load(std::sync::atomic::Ordering::SeqCst)
}

/// The optimizer of the training loop.
pub type TrainOptimizer<B> = OptimizerAdaptor<AdamW, Vla<B>, B>;
/// Its state (AdamW moments per parameter), saved with a checkpoint for resuming.
pub type OptimizerRecord<B> = <TrainOptimizer<B> as Optimizer<Vla<B>, B>>::Record;

/// Where a resumed run starts: the iterations already done and the optimizer's state then.
pub struct Resume<B: AutodiffBackend> {
    /// Iterations completed before.
    pub done: usize,
    /// The optimizer state after them.
    pub optimizer: OptimizerRecord<B>,
}

impl<B: AutodiffBackend> std::fmt::Debug for Resume<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("done", &self.done)
            .field("optimizer_entries", &self.optimizer.len())
            .finish()
    }
}

/// Trains `model` for `config.iterations` steps on the batches `next_batch` returns;
/// `on_step(iteration, loss)` is called after every step (progress bars, logging). With more
/// than one device the sequence is sharded over `devices` (ring attention,
/// `Vla::forward_train_ring`); the model lives on `devices[0]`.
///
/// # Errors
/// [`Error::Config`] for a bad config, [`Error::Runtime`] for batches the model rejects,
/// [`Error::NonFinite`] if the loss stops being finite.
pub fn train<B: AutodiffBackend + TrainAttention>(
    model: Vla<B>,
    config: &TrainConfig,
    next_batch: impl FnMut(usize) -> Result<Batch>,
    mut on_step: impl FnMut(usize, f64),
    devices: &[B::Device],
) -> Result<(Vla<B>, TrainReport)> {
    train_resumable(
        model,
        config,
        None,
        config.iterations,
        None,
        next_batch,
        |iteration, loss| {
            on_step(iteration, loss.total);
            true
        },
        devices,
    )
    .map(|(model, report, _)| (model, report))
}

/// [`train`] from iteration `resume.done` with the optimizer state `resume.optimizer` (or from
/// the start) up to iteration `until` (at most `config.iterations`), returning the optimizer
/// state at the end too. Iterations keep their absolute numbers (batches, learning-rate
/// schedule, `on_step`); the report holds the new ones only. So a run stopped at `until` and
/// resumed continues exactly where it stopped. Losses are read back every
/// [`LOSS_READ_EVERY`] iterations (and at the end), and `on_step` is called for each as it
/// arrives; it returns whether to go on: `false` ends the run after the iterations already
/// queued. With a `deadline`, no iteration after the first starts once it has passed (a time
/// limit), as if `until` had been reached there.
///
/// # Errors
/// As [`train`]; [`Error::Config`] if `resume.done` is not below `config.iterations`.
#[allow(clippy::too_many_arguments)]
pub fn train_resumable<B: AutodiffBackend + TrainAttention>(
    model: Vla<B>,
    config: &TrainConfig,
    resume: Option<Resume<B>>,
    until: usize,
    deadline: Option<std::time::Instant>,
    mut next_batch: impl FnMut(usize) -> Result<Batch>,
    mut on_step: impl FnMut(usize, &StepLoss) -> bool,
    devices: &[B::Device],
) -> Result<(Vla<B>, TrainReport, OptimizerRecord<B>)> {
    config.validate()?;
    let mut optimizer_config = AdamWConfig::new().with_weight_decay(config.weight_decay as f32);
    if let Some(clip) = config.grad_clip_norm {
        optimizer_config = optimizer_config.with_grad_clipping(Some(
            burn::grad_clipping::GradientClippingConfig::Norm(clip as f32),
        ));
    }
    let mut optimizer: TrainOptimizer<B> = optimizer_config.init::<B, Vla<B>>();
    let start = match resume {
        Some(resume) => {
            if resume.done >= config.iterations {
                return Err(Error::config(
                    "iterations",
                    format!(
                        "the run to resume already did {} of {} iterations",
                        resume.done, config.iterations
                    ),
                ));
            }
            optimizer = optimizer.load_record(resume.optimizer);
            resume.done
        }
        None => 0,
    };
    let mut model = model;
    let mut report = TrainReport::default();
    let action_values = model.config().action_values();
    let device = devices
        .first()
        .ok_or_else(|| Error::config("devices", "no device to train on"))?
        .clone();
    watch_device_threads();
    // Losses of the iterations queued since the last read-back.
    let mut pending: Vec<Pending<B>> = Vec::new();
    let mut go_on = true;
    let end = until.min(config.iterations);
    for iteration in start..end {
        if iteration > start && deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            break;
        }
        let t = std::time::Instant::now();
        let batch = next_batch(iteration)?;
        report.phases.batch += t.elapsed().as_secs_f64();
        let n = batch.instructions.len();
        if batch.actions.len() != n * batch.steps * action_values {
            return Err(runtime::Error::shape(
                "train batch actions",
                format!(
                    "expected {} values, got {}",
                    n * batch.steps * action_values,
                    batch.actions.len()
                ),
            )
            .into());
        }
        runtime::Error::check_finite("expert actions", &batch.actions)?;
        let t = std::time::Instant::now();
        let parts = batch_loss_parts(
            &model,
            &batch,
            config.cue_loss_weight,
            config.action_loss,
            devices,
        )?;
        let loss = parts.total;
        report.phases.forward += t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        report.phases.backward += t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        model = optimizer.step(config.learning_rate_at(iteration), model, grads);
        report.phases.step += t.elapsed().as_secs_f64();
        pending.push(Pending {
            iteration,
            total: loss.inner(),
            cue: parts.cue.map(|cue| cue.inner()),
        });
        if pending.len() >= LOSS_READ_EVERY {
            let t = std::time::Instant::now();
            let values = read_losses::<B>(&mut pending, &device)?;
            report.phases.sync += t.elapsed().as_secs_f64();
            for (i, value) in values {
                report.losses.push(value.total);
                go_on &= on_step(i, &value);
            }
            if !go_on {
                break;
            }
        }
    }
    let t = std::time::Instant::now();
    for (i, value) in read_losses::<B>(&mut pending, &device)? {
        report.losses.push(value.total);
        on_step(i, &value);
    }
    report.phases.sync += t.elapsed().as_secs_f64();
    Ok((model, report, optimizer.to_record()))
}

/// One iteration's loss, read back from the device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLoss {
    /// The loss that was minimized.
    pub total: f64,
    /// Its cue cross-entropy term before weighting (`None` without a cue loss).
    pub cue: Option<f64>,
}

/// An iteration's loss tensors, still on the device.
struct Pending<B: AutodiffBackend> {
    iteration: usize,
    total: Tensor<B::InnerBackend, 1>,
    cue: Option<Tensor<B::InnerBackend, 1>>,
}

/// Reads the queued losses back in one transfer, checking the device and each value.
fn read_losses<B: AutodiffBackend>(
    pending: &mut Vec<Pending<B>>,
    device: &B::Device,
) -> Result<Vec<(usize, StepLoss)>> {
    let Some(last) = pending.last().map(|p| p.iteration) else {
        return Ok(Vec::new());
    };
    let mut layout = Vec::with_capacity(pending.len());
    let mut tensors = Vec::with_capacity(2 * pending.len());
    for p in pending.drain(..) {
        layout.push((p.iteration, p.cue.is_some()));
        tensors.push(p.total);
        tensors.extend(p.cue);
    }
    let data = Tensor::cat(tensors, 0).try_into_data();
    let device_error = |reason: String| Error::Device {
        iteration: last,
        reason,
    };
    if device_panicked() {
        return Err(device_error(
            "a device thread panicked (see the log above; often an allocation failure)".into(),
        ));
    }
    let data = data.map_err(|e| device_error(format!("{e:?}")))?;
    B::sync(device).map_err(|e| device_error(format!("{e:?}")))?;
    let values = data
        .convert::<f64>()
        .into_vec::<f64>()
        .map_err(|e| device_error(format!("loss read-back: {e:?}")))?;
    let mut values = values.into_iter();
    let mut finite = |iteration: usize| match values.next() {
        Some(value) if value.is_finite() => Ok(value),
        _ => Err(Error::NonFinite {
            what: "loss",
            iteration,
        }),
    };
    layout
        .into_iter()
        .map(|(iteration, has_cue)| {
            let total = finite(iteration)?;
            let cue = if has_cue {
                Some(finite(iteration)?)
            } else {
                None
            };
            Ok((iteration, StepLoss { total, cue }))
        })
        .collect()
}

/// The cross-entropy of a classification action head's logits `[n, steps, values · bins]`
/// against the HL-Gauss targets of the expert's values `[n, steps, values]`: bin `i` gets the
/// mass a normal distribution centred on the value (σ = [`ActionBins::SIGMA_BINS`] bin widths)
/// puts in it, the end bins everything beyond them. Mean over values: `[n, steps, 1]`.
fn binned_cross_entropy<B: Backend>(
    logits: Tensor<B, 3>,
    target: Tensor<B, 3>,
    bins: &ActionBins,
    device: &B::Device,
) -> Tensor<B, 3> {
    let [n, steps, values] = target.dims();
    let k = bins.bins;
    let log_p = log_softmax(logits.reshape([n, steps, values, k]), 3);
    let scale = 1.0 / (ActionBins::SIGMA_BINS * bins.width() * std::f32::consts::SQRT_2);
    // The interior edges, in units of σ√2.
    let edges: Vec<f32> = (1..k)
        .map(|i| (bins.low + i as f32 * bins.width()) * scale)
        .collect();
    let edges = float_tensor::<B, f32, 4>(edges, [1, 1, 1, k - 1], device);
    let y = target.reshape([n, steps, values, 1]).mul_scalar(scale);
    let cdf = (edges - y).erf().add_scalar(1.0).mul_scalar(0.5); // [n, steps, values, k - 1]
    let cdf = Tensor::cat(
        vec![
            Tensor::zeros([n, steps, values, 1], device),
            cdf,
            Tensor::ones([n, steps, values, 1], device),
        ],
        3,
    );
    let p = cdf.clone().slice([0..n, 0..steps, 0..values, 1..k + 1])
        - cdf.slice([0..n, 0..steps, 0..values, 0..k]);
    (p * log_p)
        .sum_dim(3)
        .neg()
        .mean_dim(2)
        .reshape([n, steps, 1])
}

/// The training loss of `model` on `batch`: the step-weighted mean action error (squared or
/// absolute, `action_loss`; with a classification head, `action_bins`, the cross-entropy of
/// [`binned_cross_entropy`]), plus `cue_weight` × the mean cue cross-entropy over the steps with a cue class. One device runs
/// `Vla::forward_train`; several shard the sequence (`Vla::forward_train_ring`). The loss lives
/// on `devices[0]`.
///
/// # Errors
/// [`Error::Runtime`] for a batch the model rejects, [`Error::Input`] for weights or cue
/// labels of the wrong length or out of range.
pub fn batch_loss<B: TrainAttention>(
    model: &Vla<B>,
    batch: &Batch,
    cue_weight: f64,
    action_loss: ActionLoss,
    devices: &[B::Device],
) -> Result<Tensor<B, 1>> {
    batch_loss_parts(model, batch, cue_weight, action_loss, devices).map(|parts| parts.total)
}

/// [`batch_loss`] and its terms.
#[derive(Debug)]
pub struct LossParts<B: Backend> {
    /// The loss to minimize.
    pub total: Tensor<B, 1>,
    /// The unweighted cue cross-entropy (`None` when the batch or the run has no cue loss).
    pub cue: Option<Tensor<B, 1>>,
}

/// [`batch_loss`] with its cue term apart (for the training log).
///
/// # Errors
/// As [`batch_loss`].
pub fn batch_loss_parts<B: TrainAttention>(
    model: &Vla<B>,
    batch: &Batch,
    cue_weight: f64,
    action_loss: ActionLoss,
    devices: &[B::Device],
) -> Result<LossParts<B>> {
    let Some(device) = devices.first() else {
        return Err(Error::config("devices", "no device to train on"));
    };
    let n = batch.instructions.len();
    let steps = batch.steps;
    let instructions: Vec<&str> = batch.instructions.iter().map(String::as_str).collect();
    let train_batch = batch.model_input(&instructions);
    let out = if devices.len() > 1 {
        model.forward_train_ring(&train_batch, devices)?
    } else {
        model.forward_train(&train_batch, device)?
    };
    let values = model.config().action_values();
    let target = float_tensor::<B, f32, 3>(batch.actions.clone(), [n, steps, values], device);
    let per_step = match &model.config().action_bins {
        Some(bins) => binned_cross_entropy(out.actions, target, bins, device),
        None => {
            let error = out.actions - target;
            match action_loss {
                ActionLoss::Mse => error.powi_scalar(2),
                ActionLoss::L1 => error.abs(),
            }
            .mean_dim(2)
        }
    }; // [n, steps, 1]
    let action_loss = if batch.weights.is_empty() {
        per_step.mean()
    } else {
        if batch.weights.len() != n * steps
            || batch.weights.iter().any(|w| !w.is_finite() || *w < 0.0)
        {
            return Err(Error::Input {
                what: "step weights",
                reason: format!("need {} finite weights ≥ 0", n * steps),
            });
        }
        let total: f32 = batch.weights.iter().sum();
        let w = float_tensor::<B, f32, 3>(batch.weights.clone(), [n, steps, 1], device);
        (per_step * w)
            .sum()
            .div_scalar(total.max(f32::MIN_POSITIVE))
    };
    let action_only = |total| LossParts { total, cue: None };
    let Some(logits) = out.cue_logits.filter(|_| cue_weight > 0.0) else {
        return Ok(action_only(action_loss));
    };
    if batch.cue_targets.is_empty() {
        return Ok(action_only(action_loss));
    }
    let classes = model.config().cue_classes;
    if batch.cue_targets.len() != n * steps
        || batch
            .cue_targets
            .iter()
            .any(|&c| c < -1 || c >= classes as i64)
    {
        return Err(Error::Input {
            what: "cue labels",
            reason: format!("need {} labels in -1..{classes}", n * steps),
        });
    }
    let labelled = batch.cue_targets.iter().filter(|&&c| c >= 0).count();
    if labelled == 0 {
        return Ok(action_only(action_loss));
    }
    let mask: Vec<f32> = batch
        .cue_targets
        .iter()
        .map(|&c| if c >= 0 { 1.0 } else { 0.0 })
        .collect();
    let index: Vec<i64> = batch.cue_targets.iter().map(|&c| c.max(0)).collect();
    let index = Tensor::<B, 2, Int>::from_data(TensorData::new(index, [n * steps, 1]), device);
    let log_p = log_softmax(logits.reshape([n * steps, classes]), 1).gather(1, index);
    let mask = float_tensor::<B, f32, 2>(mask, [n * steps, 1], device);
    let cue_loss = (log_p * mask).sum().neg().div_scalar(labelled as f32);
    Ok(LossParts {
        total: action_loss + cue_loss.clone().mul_scalar(cue_weight as f32),
        cue: Some(cue_loss),
    })
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::ElementConversion;
    use burn::tensor::backend::Backend;
    use runtime::host::host_values;
    use runtime::model::VlaConfig;

    use super::*;

    type B = Autodiff<NdArray<f32>>;

    fn tiny_model_config() -> VlaConfig {
        VlaConfig::from_toml(
            r#"
            d_model = 64
            n_layers = 2
            n_heads = 2
            n_kv_heads = 1
            ffn_dim = 128
            n_cameras = 2
            patches_per_camera = 2
            patch_dim = 12
            proprio_dim = 4
            max_instruction_bytes = 8
            n_readout = 2
            horizon = 2
            action_dim = 2
            [rope]
            head_dim = 32
            max_position_embeddings = 256
            [kv_cache]
            dtype = "f32"
            budget_bytes = 1000000
            "#,
        )
        .expect("tiny config")
    }

    /// A fixed batch whose targets depend on the observations of earlier steps.
    fn fixed_batch(c: &VlaConfig) -> Batch {
        let (episodes, steps) = (2, 4);
        let per_step = c.n_cameras * c.patches_per_camera * c.patch_dim;
        let wave = |i: usize, phase: f32| ((i as f32) * 0.37 + phase).sin();
        let patches: Vec<f32> = (0..episodes * steps * per_step)
            .map(|i| wave(i, 0.0))
            .collect();
        let proprio: Vec<f32> = (0..episodes * steps * c.proprio_dim)
            .map(|i| wave(i, 1.0))
            .collect();
        let actions: Vec<f32> = (0..episodes * steps * c.action_values())
            .map(|i| 0.5 * wave(i / c.action_values(), 2.0))
            .collect();
        Batch {
            instructions: vec!["left".into(), "rite".into()],
            steps,
            patches,
            camera_present: vec![true; episodes * steps * c.n_cameras],
            proprio,
            actions,
            ..Batch::default()
        }
    }

    /// The schedule of the overfitting tests: 150 AdamW steps on one batch.
    fn overfit_config() -> TrainConfig {
        TrainConfig {
            iterations: 150,
            learning_rate: 3e-3,
            warmup: 10,
            weight_decay: 0.0,
            grad_clip_norm: Some(1.0),
            cue_loss_weight: 0.0,
            action_loss: ActionLoss::Mse,
        }
    }

    /// Backpropagation through the whole model works: on one fixed batch the loss falls by
    /// more than 10x within 150 AdamW steps.
    #[test]
    fn overfits_a_fixed_batch() {
        let device = Default::default();
        let c = tiny_model_config();
        let model = c.init_seeded::<B>(3, &Default::default());
        let batch = fixed_batch(&c);
        let config = overfit_config();
        let (_, report) =
            train(model, &config, |_| Ok(batch.clone()), |_, _| {}, &[device]).expect("train");
        let (first, last) = (report.losses[0], report.losses[report.losses.len() - 1]);
        eprintln!(
            "overfit: loss {first:.4e} → {last:.4e} in {} steps",
            report.losses.len()
        );
        assert!(last < first / 10.0, "loss {first} → {last}");
    }

    /// A classification action head: the loss equals a direct f64 computation (HL-Gauss
    /// targets by numerical integration of the normal density, not `erf`; a target beyond the
    /// bins puts its mass in the end bin), and training moves the decoded values onto the
    /// targets: after 150 AdamW steps on one batch the mean decoded error is under half a bin.
    #[test]
    fn binned_action_loss_matches_a_direct_computation_and_trains() {
        type Plain = NdArray<f32>;
        let device = Default::default();
        let mut c = tiny_model_config();
        let bins = ActionBins {
            bins: 24,
            low: -0.6,
            high: 0.6,
        };
        c.action_bins = Some(bins.clone());
        let mut batch = fixed_batch(&c);
        batch.actions[0] = 0.9; // beyond the last bin
        let rows = batch.instructions.len() * batch.steps;
        batch.weights = (0..rows).map(|i| 1.0 + (i % 3) as f32).collect();
        let model = c.init_seeded::<Plain>(5, &Default::default());
        let instructions: Vec<&str> = batch.instructions.iter().map(String::as_str).collect();
        let out = model
            .forward_train(&batch.model_input(&instructions), &device)
            .expect("forward");
        let logits: Vec<f64> = host_values(out.actions, "logits")
            .expect("data")
            .into_iter()
            .map(f64::from)
            .collect();
        let k = bins.bins;
        let width = f64::from(bins.width());
        let sigma = f64::from(ActionBins::SIGMA_BINS) * width;
        // P(X < x) for X ~ N(y, sigma), Simpson's rule from y - 12 sigma.
        let cdf = |x: f64, y: f64| -> f64 {
            let a = y - 12.0 * sigma;
            if x <= a {
                return 0.0;
            }
            if x >= y + 12.0 * sigma {
                return 1.0;
            }
            let n = 4000;
            let h = (x - a) / n as f64;
            let pdf = |t: f64| {
                (-(t - y).powi(2) / (2.0 * sigma * sigma)).exp()
                    / (sigma * (2.0 * std::f64::consts::PI).sqrt())
            };
            let mut sum = pdf(a) + pdf(x);
            for i in 1..n {
                sum += pdf(a + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
            }
            sum * h / 3.0
        };
        let a = c.action_values();
        let (mut weighted, mut total) = (0.0, 0.0);
        for row in 0..rows {
            let mut ce = 0.0;
            for j in 0..a {
                let y = f64::from(batch.actions[row * a + j]);
                let z = &logits[(row * a + j) * k..(row * a + j + 1) * k];
                let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                let edge = |i: usize| f64::from(bins.low) + i as f64 * width;
                for (i, zi) in z.iter().enumerate() {
                    let lo = if i == 0 { 0.0 } else { cdf(edge(i), y) };
                    let hi = if i + 1 == k { 1.0 } else { cdf(edge(i + 1), y) };
                    ce -= (hi - lo) * (zi - lse);
                }
            }
            let w = f64::from(batch.weights[row]);
            weighted += w * ce / a as f64;
            total += w;
        }
        let want = weighted / total;
        let got: f64 = batch_loss(&model, &batch, 0.0, ActionLoss::Mse, &[device])
            .expect("loss")
            .into_scalar()
            .elem();
        assert!(
            ((got - want) / want).abs() < 1e-5,
            "binned loss {got} vs direct {want}"
        );

        let model = c.init_seeded::<B>(5, &Default::default());
        batch.actions[0] = 0.3;
        let config = overfit_config();
        let (model, _) =
            train(model, &config, |_| Ok(batch.clone()), |_, _| {}, &[device]).expect("train");
        let model = burn::module::AutodiffModule::valid(&model);
        let out = model
            .forward_train(&batch.model_input(&instructions), &device)
            .expect("forward");
        let raw = host_values(out.actions, "logits").expect("data");
        let decoded: Vec<f32> = raw
            .chunks(c.action_head_outputs())
            .flat_map(|step| c.decode_actions(step))
            .collect();
        let mean_err = decoded
            .iter()
            .zip(&batch.actions)
            .map(|(d, t)| f64::from((d - t).abs()))
            .sum::<f64>()
            / decoded.len() as f64;
        assert!(
            mean_err < 0.5 * width,
            "mean decoded error {mean_err} (bin width {width})"
        );
    }

    /// A non-finite loss stops the run with an error naming the iteration (no model comes back
    /// to be saved), even when it is found at a read-back several iterations later.
    #[test]
    fn non_finite_loss_is_an_error() {
        struct Poison;
        impl<Bk: Backend> burn::module::ModuleMapper<Bk> for Poison {
            fn map_float<const D: usize>(
                &mut self,
                param: burn::module::Param<Tensor<Bk, D>>,
            ) -> burn::module::Param<Tensor<Bk, D>> {
                param.map(|t| t.mul_scalar(f32::NAN))
            }
        }
        use burn::module::Module;
        let device = Default::default();
        let c = tiny_model_config();
        let model = c.init_seeded::<B>(4, &Default::default()).map(&mut Poison);
        let batch = fixed_batch(&c);
        let config = TrainConfig {
            iterations: 3,
            learning_rate: 1e-3,
            warmup: 1,
            weight_decay: 0.0,
            grad_clip_norm: Some(1.0),
            cue_loss_weight: 0.0,
            action_loss: ActionLoss::Mse,
        };
        let mut reported = Vec::new();
        let result = train(
            model,
            &config,
            |_| Ok(batch.clone()),
            |i, _| reported.push(i),
            &[device],
        );
        assert!(
            matches!(
                result,
                Err(Error::NonFinite {
                    what: "loss",
                    iteration: 0
                })
            ),
            "{:?}",
            result.as_ref().err()
        );
        assert!(
            reported.is_empty(),
            "a non-finite loss was reported as a step"
        );
    }

    /// Training with the sequence sharded over two (CPU) devices follows the one-device run:
    /// the same losses over 5 AdamW steps, ≤ 1e-4 relative.
    #[test]
    fn ring_training_follows_one_device() {
        let device = Default::default();
        let c = tiny_model_config();
        let batch = fixed_batch(&c);
        let config = TrainConfig {
            iterations: 5,
            learning_rate: 3e-3,
            warmup: 1,
            weight_decay: 0.0,
            grad_clip_norm: Some(1.0),
            cue_loss_weight: 0.0,
            action_loss: ActionLoss::Mse,
        };
        let model = c.init_seeded::<B>(5, &Default::default());
        let run = |devices: &[burn::tensor::Device<B>]| {
            train(
                model.clone(),
                &config,
                |_| Ok(batch.clone()),
                |_, _| {},
                devices,
            )
            .expect("train")
            .1
            .losses
        };
        let one = run(&[device]);
        let ring = run(&[device, device]);
        for (i, (a, b)) in one.iter().zip(&ring).enumerate() {
            assert!(((a - b) / a).abs() < 1e-4, "iteration {i}: {a} vs {b}");
        }
        assert!(matches!(
            train(model, &config, |_| Ok(batch.clone()), |_, _| {}, &[]),
            Err(Error::Config { .. })
        ));
    }

    #[test]
    fn bad_configs_and_batches_are_errors() {
        let device = Default::default();
        let c = tiny_model_config();
        let model = c.init_seeded::<B>(6, &Default::default());
        let good = TrainConfig {
            iterations: 1,
            learning_rate: 1e-3,
            warmup: 0,
            weight_decay: 0.0,
            grad_clip_norm: None,
            cue_loss_weight: 0.0,
            action_loss: ActionLoss::Mse,
        };
        let bad_lr = TrainConfig {
            learning_rate: -1.0,
            ..good.clone()
        };
        let err = train(
            model.clone(),
            &bad_lr,
            |_| Ok(fixed_batch(&c)),
            |_, _| {},
            &[device],
        )
        .err();
        assert!(
            matches!(err, Some(Error::Config { ref key, .. }) if key == "learning_rate"),
            "{err:?}"
        );
        let mut short = fixed_batch(&c);
        short.actions.pop();
        assert!(
            train(
                model.clone(),
                &good,
                |_| Ok(short.clone()),
                |_, _| {},
                &[device]
            )
            .is_err()
        );
        let mut nan = fixed_batch(&c);
        nan.actions[0] = f32::NAN;
        let err = train(model, &good, |_| Ok(nan.clone()), |_, _| {}, &[device]).err();
        assert!(
            matches!(err, Some(Error::Runtime(runtime::Error::NonFinite { .. }))),
            "{err:?}"
        );
        let text = "iterations = 5\nlearning_rate = 1e-3\nlearnig_rate = 2\n";
        assert!(
            toml::from_str::<TrainConfig>(text)
                .err()
                .is_some_and(|e| e.to_string().contains("learnig_rate"))
        );
    }

    /// The loss equals a direct f64 computation from the model's outputs: step-weighted mean
    /// squared (or absolute) action error plus the weighted mean cross-entropy over the
    /// labelled steps.
    #[test]
    fn loss_matches_a_direct_computation() {
        type Plain = NdArray<f32>;
        let device = Default::default();
        let mut c = tiny_model_config();
        c.cue_classes = 3;
        let model = c.init_seeded::<Plain>(7, &Default::default());
        let mut batch = fixed_batch(&c);
        let rows = batch.instructions.len() * batch.steps;
        batch.weights = (0..rows).map(|i| 0.5 + i as f32).collect();
        batch.cue_targets = (0..rows as i64).map(|i| (i % 4) - 1).collect();
        let instructions: Vec<&str> = batch.instructions.iter().map(String::as_str).collect();
        let out = model
            .forward_train(&batch.model_input(&instructions), &device)
            .expect("forward");
        let host = |t: Tensor<Plain, 3>| -> Vec<f64> {
            let v = t
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("data");
            v.into_iter().map(f64::from).collect()
        };
        let actions = host(out.actions);
        let logits = host(out.cue_logits.expect("cue head"));
        let a = c.action_values();
        let (mut ce, mut labelled) = (0.0, 0.0);
        for row in 0..rows {
            let label = batch.cue_targets[row];
            if label >= 0 {
                let z = &logits[row * 3..row * 3 + 3];
                let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                ce += lse - z[label as usize];
                labelled += 1.0;
            }
        }
        for (kind, power) in [(ActionLoss::Mse, 2), (ActionLoss::L1, 1)] {
            let (mut weighted, mut total) = (0.0, 0.0);
            for row in 0..rows {
                let err = (0..a)
                    .map(|j| {
                        (actions[row * a + j] - f64::from(batch.actions[row * a + j]))
                            .abs()
                            .powi(power)
                    })
                    .sum::<f64>()
                    / a as f64;
                let w = f64::from(batch.weights[row]);
                weighted += w * err;
                total += w;
            }
            let got: f64 = batch_loss(&model, &batch, 0.7, kind, &[device])
                .expect("loss")
                .into_scalar()
                .elem();
            let want = weighted / total + 0.7 * ce / labelled;
            assert!(
                ((got - want) / want).abs() < 1e-5,
                "{kind:?} loss {got} vs direct {want}"
            );
        }
        // The cue term on its own (the training log's `cue_loss`), unweighted.
        let parts =
            batch_loss_parts(&model, &batch, 0.7, ActionLoss::Mse, &[device]).expect("parts");
        let cue: f64 = parts.cue.expect("cue term").into_scalar().elem();
        let want_cue = ce / labelled;
        assert!(
            ((cue - want_cue) / want_cue).abs() < 1e-5,
            "cue loss {cue} vs direct {want_cue}"
        );
        let action_only =
            batch_loss_parts(&model, &batch, 0.0, ActionLoss::Mse, &[device]).expect("parts");
        assert!(action_only.cue.is_none());
        // Labels out of range and weights of the wrong length are errors.
        let mut bad = batch.clone();
        bad.cue_targets[0] = 3;
        assert!(matches!(
            batch_loss(&model, &bad, 0.7, ActionLoss::Mse, &[device]),
            Err(Error::Input { .. })
        ));
        let mut bad = batch;
        bad.weights.pop();
        assert!(matches!(
            batch_loss(&model, &bad, 0.7, ActionLoss::L1, &[device]),
            Err(Error::Input { .. })
        ));
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        let config = TrainConfig {
            iterations: 100,
            learning_rate: 1.0,
            warmup: 10,
            weight_decay: 0.0,
            grad_clip_norm: None,
            cue_loss_weight: 0.0,
            action_loss: ActionLoss::Mse,
        };
        assert!((config.learning_rate_at(0) - 0.1).abs() < 1e-12);
        assert!((config.learning_rate_at(9) - 1.0).abs() < 1e-12);
        assert!((config.learning_rate_at(10) - 1.0).abs() < 1e-12);
        assert!((config.learning_rate_at(99) - 0.1).abs() < 1e-3);
        assert!(config.learning_rate_at(55) < config.learning_rate_at(20));
    }
}
