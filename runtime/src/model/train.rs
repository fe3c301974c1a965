//! The training forward: whole episodes at once ([`TrainBatch`] in, [`TrainOutput`] out), with
//! the block-causal mask of the streaming step (each step's readouts hidden from later tokens)
//! given as per-token index and group lists to the memory-efficient attention, never as a dense
//! `[len, len]` tensor; the naive forward it must equal; the layout shared with ring training.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::{StepInput, Vla};
use crate::error::{Error, Result};
use crate::flash::{AttentionMask, TrainAttention};
use crate::host::float_tensor;
use crate::rope::RotaryTable;

/// A training batch: `batch` episodes of `steps` frame-steps each, host-side, row-major.
#[derive(Clone, Debug)]
pub struct TrainBatch<'a> {
    /// One instruction per episode (lengths may differ).
    pub instructions: &'a [&'a str],
    /// Frame-steps per episode.
    pub steps: usize,
    /// `[batch, steps, n_cameras, patches_per_camera, patch_dim]`.
    pub patches: &'a [f32],
    /// `[batch, steps, n_cameras]`.
    pub camera_present: &'a [bool],
    /// `[batch, steps, proprio_dim]`.
    pub proprio: &'a [f32],
}

/// What the training forward pass predicts at every step of every episode.
#[derive(Clone, Debug)]
pub struct TrainOutput<B: Backend> {
    /// The action head's outputs `[batch, steps, action_head_outputs]`: the action chunks'
    /// values, or with `action_bins` their bins' logits (decode with
    /// [`VlaConfig::decode_actions`](super::VlaConfig::decode_actions) per step).
    pub actions: Tensor<B, 3>,
    /// Cue-class logits `[batch, steps, cue_classes]`, if the model has a cue-recall head.
    pub cue_logits: Option<Tensor<B, 3>>,
}

/// Where each token of one training sequence sits and what it may see.
pub(crate) struct TrainLayout {
    /// Position of every token (readouts share positions with the next step's first tokens,
    /// as at inference, where they are never cached).
    pub(crate) positions: Vec<i64>,
    /// Visibility group of every token (see [`visible`]).
    pub(crate) groups: Vec<usize>,
}

/// Group of instruction padding (and of any padding appended to a sequence).
pub(crate) const PAD_GROUP: usize = usize::MAX;

/// Group ids as the device sees them (`PAD_GROUP` → −1).
pub(crate) fn group_ids(groups: impl Iterator<Item = usize>) -> Vec<i64> {
    groups
        .map(|g| if g == PAD_GROUP { -1 } else { g as i64 })
        .collect()
}

/// The training attention bias `[batch, 1, tq, tk]`, built on the device: query token i (global
/// index `q_index[i]`, group `q_groups[e][i]`) sees key token j when it is not later
/// (`k_index[j] ≤ q_index[i]`) and either j is context (group 0) and i is not padding, or
/// both are in the same group (a step's readouts see each other; padding sees padding).
/// 0 where visible, −∞ elsewhere.
///
/// # Shapes
/// - `q_groups`: `[batch, tq]` (−1 for padding); `k_groups`: `[batch, tk]`
pub(crate) fn train_bias<B: Backend>(
    q_index: &[i64],
    q_groups: Vec<i64>,
    k_index: &[i64],
    k_groups: Vec<i64>,
    batch: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let (tq, tk) = (q_index.len(), k_index.len());
    let shape = [batch, tq, tk];
    let int = |values: Vec<i64>, dims: [usize; 3]| {
        Tensor::<B, 3, Int>::from_data(TensorData::new(values, dims), device).expand(shape)
    };
    let qi = int(q_index.to_vec(), [1, tq, 1]);
    let kj = int(k_index.to_vec(), [1, 1, tk]);
    let gi = int(q_groups, [batch, tq, 1]);
    let gj = int(k_groups, [batch, 1, tk]);
    let causal = kj.lower_equal(qi);
    let context = gj
        .clone()
        .equal_elem(0)
        .bool_and(gi.clone().not_equal_elem(-1));
    let mask = causal.bool_and(context.bool_or(gj.equal(gi)));
    Tensor::<B, 3>::full(shape, f32::NEG_INFINITY, device)
        .mask_fill(mask, 0.0)
        .unsqueeze_dim(1)
}

/// Layout of a sequence whose instruction has `sinks` tokens, padded to `padded_sinks`, then
/// `steps` × (`step_tokens` step tokens, `memory` memory tokens (0 or 1), `readouts` readout
/// tokens). The memory token is context (group 0) at the position after its step's tokens;
/// the readouts follow it.
fn train_layout(
    sinks: usize,
    padded_sinks: usize,
    steps: usize,
    step_tokens: usize,
    memory: usize,
    readouts: usize,
) -> TrainLayout {
    // Group per token: 0 for context (instruction and step tokens), k + 1 for step k's
    // readouts, PAD_GROUP for instruction padding.
    let mut groups = vec![0usize; sinks];
    groups.extend(std::iter::repeat_n(PAD_GROUP, padded_sinks - sinks));
    let mut positions: Vec<i64> = (0..sinks as i64).collect();
    positions.extend(std::iter::repeat_n(0, padded_sinks - sinks));
    for k in 0..steps {
        let first = (sinks + k * step_tokens) as i64;
        positions.extend(first..first + step_tokens as i64);
        groups.extend(std::iter::repeat_n(0, step_tokens));
        let after = first + step_tokens as i64;
        positions.extend(after..after + memory as i64);
        groups.extend(std::iter::repeat_n(0, memory));
        let after = after + memory as i64;
        positions.extend(after..after + readouts as i64);
        groups.extend(std::iter::repeat_n(k + 1, readouts));
    }
    TrainLayout { positions, groups }
}

/// The embedded training sequence of a batch: `x` `[batch, len, d_model]`, one layout per
/// episode, the padded instruction length.
pub(crate) struct TrainSequence<B: Backend> {
    pub(crate) x: Tensor<B, 3>,
    pub(crate) layouts: Vec<TrainLayout>,
    pub(crate) padded_sinks: usize,
    pub(crate) steps: usize,
}

impl<B: Backend> Vla<B> {
    /// The action chunk (and cue logits) predicted at every step of every episode, in one
    /// forward pass (the training path). Each step's readouts see the instruction and the step
    /// tokens up to and including their own step, exactly as
    /// [`forward_step`](Self::forward_step) does with a cache that evicts nothing.
    ///
    /// All steps are embedded in one batched call; the sequence of an episode is
    /// `[instruction (padded), step 0 tokens, step 0 readouts, step 1 tokens, …]`.
    ///
    /// Instructions are padded to the model's longest ([`VlaConfig::max_sink_tokens`]); the
    /// padding is masked from every token and positions continue from each episode's own
    /// instruction length.
    ///
    /// # Errors
    /// [`Error::Shape`] for inputs of the wrong size or an over-long instruction,
    /// [`Error::NonFinite`] for NaN/∞ in present cameras or proprio.
    pub fn forward_train(
        &self,
        batch: &TrainBatch<'_>,
        device: &B::Device,
    ) -> Result<TrainOutput<B>>
    where
        B: TrainAttention,
    {
        if self.config.memory.is_some() {
            return self.forward_train_memory(batch, device);
        }
        let seq = self.train_sequence(batch, device)?;
        let (table, index, groups) = self.train_positions(&seq, device)?;
        let mask = AttentionMask::grouped(
            seq.layouts.len(),
            index.clone(),
            groups.clone(),
            index,
            groups,
        )?;
        let mut x = seq.x;
        for block in &self.layers {
            x = block.forward_flash(x, &table, &mask)?;
        }
        let hidden = self.norm.forward(x);
        Ok(self.train_heads(hidden, seq.padded_sinks, seq.steps))
    }

    /// [`forward_train`](Self::forward_train) with the naive attention: the dense training
    /// bias `[batch, len, len]` and softmax over whole rows (the reference the memory-efficient
    /// path is tested against).
    ///
    /// # Errors
    /// As [`forward_train`](Self::forward_train).
    pub fn forward_train_naive(
        &self,
        batch: &TrainBatch<'_>,
        device: &B::Device,
    ) -> Result<TrainOutput<B>> {
        if self.config.memory.is_some() {
            return Err(Error::config(
                "memory",
                "the naive training forward has no memory bank (use forward_train)",
            ));
        }
        let seq = self.train_sequence(batch, device)?;
        let (table, index, groups) = self.train_positions(&seq, device)?;
        let (n_batch, len) = (seq.layouts.len(), index.len());
        let bias = train_bias::<B>(&index, groups.clone(), &index, groups, n_batch, device)
            .reshape([n_batch, len, len]);
        let hidden = self.backbone(seq.x, &table, bias)?;
        Ok(self.train_heads(hidden, seq.padded_sinks, seq.steps))
    }

    /// The RoPE table of a training sequence's positions, its token indices and the
    /// visibility group of every token (as the device sees them), shared by the flash and
    /// naive training forwards.
    fn train_positions(
        &self,
        seq: &TrainSequence<B>,
        device: &B::Device,
    ) -> Result<(RotaryTable<B>, Vec<i64>, Vec<i64>)> {
        let c = &self.config;
        let len = seq.layouts[0].positions.len();
        let max_position = seq.padded_sinks + seq.steps * c.tokens_per_step() + c.n_readout;
        let positions: Vec<i64> = seq
            .layouts
            .iter()
            .flat_map(|l| l.positions.iter().copied())
            .collect();
        let table = c.rope.frequencies(Some(max_position)).batched_table::<B>(
            &positions,
            seq.layouts.len(),
            device,
        )?;
        let index: Vec<i64> = (0..len as i64).collect();
        let groups = group_ids(seq.layouts.iter().flat_map(|l| l.groups.iter().copied()));
        Ok((table, index, groups))
    }

    /// Embeds a training batch (checked) into one sequence per episode.
    pub(crate) fn train_sequence(
        &self,
        batch: &TrainBatch<'_>,
        device: &B::Device,
    ) -> Result<TrainSequence<B>> {
        let c = &self.config;
        let n_batch = batch.instructions.len();
        let steps = batch.steps;
        let per_step = c.n_cameras * c.patches_per_camera * c.patch_dim;
        if n_batch == 0
            || steps == 0
            || batch.patches.len() != n_batch * steps * per_step
            || batch.camera_present.len() != n_batch * steps * c.n_cameras
            || batch.proprio.len() != n_batch * steps * c.proprio_dim
        {
            return Err(Error::shape(
                "train batch",
                format!(
                    "{n_batch} episodes × {steps} steps need {} patch values, {} camera flags and {} proprio values; got {}, {}, {}",
                    n_batch * steps * per_step,
                    n_batch * steps * c.n_cameras,
                    n_batch * steps * c.proprio_dim,
                    batch.patches.len(),
                    batch.camera_present.len(),
                    batch.proprio.len()
                ),
            ));
        }
        let ids: Vec<Vec<i64>> = batch
            .instructions
            .iter()
            .map(|text| self.instruction_ids(text))
            .collect::<Result<_>>()?;
        // Instructions are padded to the longest the model takes, so every batch of a given
        // episode length has the same shapes (a device compiles and tunes its kernels once per
        // shape); padding is masked from every token.
        let padded_sinks = c.max_sink_tokens();
        let rows = n_batch * steps;
        for at in 0..rows {
            self.check_step(&StepInput {
                patches: &batch.patches[at * per_step..(at + 1) * per_step],
                camera_present: &batch.camera_present[at * c.n_cameras..(at + 1) * c.n_cameras],
                proprio: &batch.proprio[at * c.proprio_dim..(at + 1) * c.proprio_dim],
            })?;
        }
        // Step tokens of every (episode, step) in one batched embedding; missing cameras'
        // patches are zeroed (they may hold anything), the missing embedding replaces them.
        let n_patches = c.n_cameras * c.patches_per_camera;
        let per_camera = c.patches_per_camera * c.patch_dim;
        let mut values = batch.patches.to_vec();
        for (slot, present) in batch.camera_present.iter().enumerate() {
            if !present {
                values[slot * per_camera..(slot + 1) * per_camera].fill(0.0);
            }
        }
        let mask: Vec<f32> = batch
            .camera_present
            .iter()
            .flat_map(|p| std::iter::repeat_n(if *p { 1.0 } else { 0.0 }, c.patches_per_camera))
            .collect();
        let step_tokens = self.embed_step(
            float_tensor(values, [rows, n_patches, c.patch_dim], device),
            float_tensor(mask, [rows, n_patches, 1], device),
            float_tensor(batch.proprio.to_vec(), [rows, c.proprio_dim], device),
        );
        let (tps, r, d) = (c.tokens_per_step(), c.n_readout, c.d_model);
        let chunk = c.step_rows();
        let mut parts = vec![step_tokens];
        let memory = match (&c.memory, &self.memory_token) {
            (None, _) => 0,
            (Some(_), Some(token)) => {
                parts.push(token.val().reshape([1, 1, d]).repeat_dim(0, rows));
                1
            }
            (Some(_), None) => {
                return Err(Error::config("memory", "the model has no memory token"));
            }
        };
        parts.push(self.readout_tokens(rows));
        let steps_x = Tensor::cat(parts, 1).reshape([n_batch, steps * chunk, d]);
        let instructions: Vec<Tensor<B, 3>> = ids
            .iter()
            .map(|episode_ids| {
                let x = self.embed_instruction(episode_ids, device);
                if episode_ids.len() < padded_sinks {
                    let pad = Tensor::zeros([1, padded_sinks - episode_ids.len(), d], device);
                    Tensor::cat(vec![x, pad], 1)
                } else {
                    x
                }
            })
            .collect();
        let x = Tensor::cat(vec![Tensor::cat(instructions, 0), steps_x], 1);
        let layouts: Vec<TrainLayout> = ids
            .iter()
            .map(|i| train_layout(i.len(), padded_sinks, steps, tps, memory, r))
            .collect();
        Ok(TrainSequence {
            x,
            layouts,
            padded_sinks,
            steps,
        })
    }

    /// The heads over the final hidden states `[batch, len, d_model]` of training sequences.
    pub(crate) fn train_heads(
        &self,
        hidden: Tensor<B, 3>,
        padded_sinks: usize,
        steps: usize,
    ) -> TrainOutput<B> {
        let c = &self.config;
        let [n_batch, len, d] = hidden.dims();
        let (chunk, r) = (c.step_rows(), c.n_readout);
        let rows = n_batch * steps;
        // Every step's readouts: the last `r` tokens of each step chunk.
        let readouts = hidden
            .slice([0..n_batch, padded_sinks..len, 0..d])
            .reshape([rows, chunk, d])
            .slice([0..rows, chunk - r..chunk, 0..d])
            .reshape([rows, r * d]);
        let actions = self.action_head.forward(readouts.clone()).reshape([
            n_batch,
            steps,
            c.action_head_outputs(),
        ]);
        let cue_logits = self.cue_head.as_ref().map(|head| {
            head.forward(readouts)
                .reshape([n_batch, steps, c.cue_classes])
        });
        TrainOutput {
            actions,
            cue_logits,
        }
    }
}
