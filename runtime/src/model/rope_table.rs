//! The rotary table a step needs, kept between steps by both step engines (the host engine's
//! [`crate::attention::HostRope`], the device mirror's tensor table).

use crate::error::{Error, Result};
use crate::model::VlaConfig;
use crate::rope::RopeFrequencies;

/// A rotary table built for the frequencies a sequence length calls for, over positions
/// `0..span` (the model's context, or the sequence when that is longer). Rebuilt only when the
/// frequencies change (dynamic NTK past `rope.max_position_embeddings`; LongRoPE's switch to
/// its long factors) or a sequence outgrows the span.
#[derive(Debug)]
pub(crate) struct RopeTableCache<T> {
    built: Option<(RopeFrequencies, usize, T)>,
}

impl<T> Default for RopeTableCache<T> {
    fn default() -> Self {
        Self { built: None }
    }
}

impl<T> RopeTableCache<T> {
    /// The table for sequences of `seq_len` positions, built by `build(frequencies, span)` when
    /// the one kept does not serve.
    ///
    /// # Errors
    /// Whatever `build` reports.
    pub(crate) fn get(
        &mut self,
        config: &VlaConfig,
        seq_len: usize,
        build: impl FnOnce(&RopeFrequencies, usize) -> Result<T>,
    ) -> Result<&T> {
        let freqs = config.rope.frequencies(Some(seq_len));
        let stale = self
            .built
            .as_ref()
            .is_none_or(|(f, span, _)| *f != freqs || *span < seq_len);
        if stale {
            let span = config.context_length().max(seq_len);
            let table = build(&freqs, span)?;
            self.built = Some((freqs, span, table));
        }
        self.built
            .as_ref()
            .map(|(_, _, table)| table)
            .ok_or_else(|| Error::shape("rope table", "not built"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table is built once for the steps under its span, again when a sequence outgrows it
    /// (with the frequencies that length calls for: dynamic NTK's change past
    /// `max_position_embeddings`).
    #[test]
    fn builds_once_and_again_only_when_stale() {
        let config = crate::model::tests::tiny_config(
            1,
            r#"{ rope_type = "dynamic", factor = 2.0 }"#,
            "f32",
            1 << 20,
        );
        let mut cache = RopeTableCache::<(RopeFrequencies, usize)>::default();
        let mut builds = 0;
        {
            let mut get = |len: usize| {
                cache
                    .get(&config, len, |f, span| {
                        builds += 1;
                        Ok((f.clone(), span))
                    })
                    .expect("table")
                    .clone()
            };
            let (short, span) = get(10);
            assert!(span >= 10);
            assert_eq!(get(20), (short.clone(), span));
            let (long, longer_span) = get(span + 5);
            assert!(longer_span >= span + 5);
            assert!(
                long != short,
                "dynamic NTK past its maximum changes the frequencies"
            );
        }
        assert_eq!(builds, 2);
    }
}
