use burn::backend::NdArray;
use runtime::kv::KvDtype;
use runtime::model::{BankEviction, MemoryOverride, VlaConfig};
use runtime::rope::RopeScaling;

use super::heatmap;
use super::report::{self, CSV_HEADER, ReportMeta, Z95, wilson};
use super::sweep::*;
use crate::error::Error;
use sim::TaskConfig;

type B = NdArray<f32>;

/// A sweep spec over the shipped task (training length 64 frame-steps).
fn spec(lengths: Vec<usize>, depths: Vec<f64>, episodes: usize) -> SweepSpec {
    SweepSpec {
        lengths,
        depths,
        episodes,
        seed: 7,
        methods: vec![RopeMethod::Yarn],
        dtypes: vec![KvDtype::F32],
        budgets: vec![Budget::Full],
        recalls: vec![Recall::On],
        design: Design::Axes,
        train_length: 64,
    }
}

/// The harness itself is right: on the sweep (lengths 1x-4x the training length, depths 0-100%,
/// 600 episodes), the oracle (told the cue) succeeds and recalls the cue in every episode, and
/// a policy without memory succeeds at chance, 1/4. Its successes are Binomial(600, 1/4):
/// mean 150, standard deviation 10.6; the test accepts 150 ± 42 (4 standard deviations, a
/// false alarm about once in 16,000 seeds), and the same per length (200 episodes: 50 ± 24.5).
#[test]
fn oracle_scores_100_and_history_blind_scores_chance_on_the_sweep() {
    let task = TaskConfig::default();
    let s = spec(vec![64, 128, 256], vec![0.0, 0.25, 0.5, 0.75, 1.0], 40);
    let mut last = None;
    let oracle = run_sweep(&s, &task, &OracleFactory, 2, &mut |p| {
        last = Some(p.clone())
    })
    .expect("oracle sweep");
    let last = last.expect("progress reported");
    assert_eq!(last.episodes_done, 600);
    assert_eq!(last.steps_done, last.steps_total);
    assert_eq!(oracle.len(), 15);
    for cell in &oracle {
        assert_eq!(cell.episodes, 40);
        assert_eq!(cell.successes, 40, "oracle failed in {cell:?}");
        assert_eq!(cell.cue_correct, Some(40));
    }

    let blind = run_sweep(&s, &task, &HistoryBlindFactory, 3, &mut |_| {}).expect("blind sweep");
    let total: usize = blind.iter().map(|c| c.successes).sum();
    let episodes: usize = blind.iter().map(|c| c.episodes).sum();
    assert_eq!(episodes, 600);
    let (p, n) = (0.25, episodes as f64);
    let (mean, sd) = (n * p, (n * p * (1.0 - p)).sqrt());
    assert!(
        (total as f64 - mean).abs() <= 4.0 * sd,
        "history-blind succeeded {total}/{episodes}, chance is {mean} ± {:.1} (4 sd)",
        4.0 * sd
    );
    for &length in &s.lengths {
        let k: usize = blind
            .iter()
            .filter(|c| c.length == length)
            .map(|c| c.successes)
            .sum();
        let (m, sd) = (200.0 * p, (200.0 * p * (1.0 - p)).sqrt());
        assert!((k as f64 - m).abs() <= 4.0 * sd, "length {length}: {k}/200");
    }
    // Its cue guess is the pad it reaches, so recall equals success.
    for cell in &blind {
        assert_eq!(cell.cue_correct, Some(cell.successes));
    }
    // The result does not depend on the number of threads.
    let serial = run_sweep(&s, &task, &HistoryBlindFactory, 1, &mut |_| {}).expect("serial");
    assert_eq!(serial, blind);
}

#[test]
fn paired_seeds_are_shared_across_configs_and_differ_across_cells() {
    let a = episode_seed(1, 64, 0.5, 3);
    assert_eq!(a, episode_seed(1, 64, 0.5, 3));
    assert_ne!(a, episode_seed(1, 64, 0.5, 4));
    assert_ne!(a, episode_seed(1, 128, 0.5, 3));
    assert_ne!(a, episode_seed(1, 64, 0.25, 3));
    assert_ne!(a, episode_seed(2, 64, 0.5, 3));
}

#[test]
fn bad_arguments_are_clear_errors() {
    let task = TaskConfig::default();
    let err = "rotary"
        .parse::<RopeMethod>()
        .expect_err("unknown method")
        .to_string();
    assert!(
        err.contains("unknown method `rotary`") && err.contains("yarn"),
        "{err}"
    );
    let err = "half"
        .parse::<Budget>()
        .expect_err("bad budget")
        .to_string();
    assert!(err.contains("window:N"), "{err}");
    assert!("window:0".parse::<Budget>().is_err());
    let err = spec(vec![32, 64], vec![0.5], 1)
        .validate(&task)
        .expect_err("below training length")
        .to_string();
    assert!(
        err.contains("32 frame-steps is below the training length 64"),
        "{err}"
    );
    let err = spec(vec![64], vec![1.5], 1)
        .validate(&task)
        .expect_err("depth")
        .to_string();
    assert!(err.contains("1.5 is not a fraction"), "{err}");
    assert!(spec(vec![64], vec![0.5], 0).validate(&task).is_err());
    let mut short = spec(vec![20], vec![0.5], 1);
    short.train_length = 10;
    let err = short.validate(&task).expect_err("too short").to_string();
    assert!(err.contains("go phase"), "{err}");
}

#[test]
fn parses_and_labels_methods_and_budgets() {
    for m in RopeMethod::ALL {
        assert_eq!(m.name().parse::<RopeMethod>().expect("round trip"), m);
    }
    assert_eq!("linear".parse::<RopeMethod>().ok(), Some(RopeMethod::Pi));
    for b in [
        Budget::Full,
        Budget::Model,
        Budget::Window(38),
        Budget::Bytes(1572864),
    ] {
        assert_eq!(b.label().parse::<Budget>().expect("round trip"), b);
    }
}

#[test]
fn axes_design_varies_one_factor_at_a_time_around_the_baseline() {
    let mut s = spec(vec![64], vec![0.5], 1);
    s.methods = vec![RopeMethod::Yarn, RopeMethod::Pi, RopeMethod::None];
    s.dtypes = vec![KvDtype::F32, KvDtype::Int8];
    s.budgets = vec![Budget::Full, Budget::Window(4)];
    let configs = s.configs().expect("configs");
    assert_eq!(configs.len(), 3 + 1 + 1);
    assert_eq!(
        configs[0],
        EvalConfig {
            method: RopeMethod::Yarn,
            dtype: KvDtype::F32,
            budget: Budget::Full,
            recall: Recall::On,
        }
    );
    s.design = Design::Grid;
    assert_eq!(s.configs().expect("grid").len(), 12);
    s.recalls = vec![Recall::On, Recall::Off];
    assert_eq!(s.configs().expect("grid").len(), 24);
    s.design = Design::Axes;
    let configs = s.configs().expect("axes");
    assert_eq!(configs.len(), 3 + 1 + 1 + 1);
    assert_eq!(
        configs.last().map(|c| (c.method, c.recall)),
        Some((RopeMethod::Yarn, Recall::Off))
    );
    for (text, want) in [("on", Recall::On), ("off", Recall::Off)] {
        assert_eq!(text.parse::<Recall>().expect("parses"), want);
        assert_eq!(want.to_string(), text);
    }
    assert!("of".parse::<Recall>().is_err());
}

/// Recall off shrinks a memory model's bank to its KV window in every cell (the CSV and the
/// report say so, and its episodes run); on a model without a memory it is an error.
#[test]
fn recall_off_bounds_the_bank_by_the_window() {
    let device = Default::default();
    let factory = tiny_memory_factory(11);
    let mut s = spec(vec![16], vec![0.0], 1);
    s.train_length = 16;
    s.methods = vec![RopeMethod::Trained];
    s.recalls = vec![Recall::On, Recall::Off];
    let cells = run_sweep(&s, &tiny_task(), &factory, 1, &mut |_| {}).expect("sweep");
    assert_eq!(cells.len(), 2);
    for cell in &cells {
        let want = match cell.config.recall {
            Recall::On => 12,
            Recall::Off => 3,
        };
        assert_eq!(cell.setup.bank_steps, Some(want), "{:?}", cell.config);
        assert_eq!(cell.episodes, 1);
    }
    let csv = report::csv(&cells);
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!((rows[0][3], rows[0][6]), ("on", "12"));
    assert_eq!((rows[1][3], rows[1][6]), ("off", "3"));
    let meta = ReportMeta {
        command: "edgevla eval".into(),
        seed: 7,
        policy: "tiny memory model".into(),
        train_length: 16,
        original_context: Some(256),
        baseline: s.baseline().expect("baseline"),
        seconds: 1.0,
    };
    let md = report::markdown(&cells, &meta);
    assert!(md.contains("## Recall of evicted frame-steps"), "{md}");
    assert!(md.contains("trained / f32 / full / recall off"), "{md}");

    // A longer bank at run time: every cell runs with it, recall off still cuts it.
    let longer = tiny_memory_factory(11)
        .with_bank_steps(40)
        .expect("bank of 40");
    let cells = run_sweep(&s, &tiny_task(), &longer, 1, &mut |_| {}).expect("sweep");
    let banks: Vec<_> = cells.iter().map(|c| c.setup.bank_steps).collect();
    assert_eq!(banks, vec![Some(40), Some(3)]);
    assert!(matches!(
        tiny_memory_factory(11).with_bank_steps(0),
        Err(Error::Runtime(_))
    ));
    // Eviction by reads: in every recall-on policy; recall off stays a FIFO of the window.
    let read = tiny_memory_factory(11)
        .with_memory_settings(&MemoryOverride {
            bank_eviction: Some(BankEviction::Read),
            bank_recent_steps: Some(2),
            ..MemoryOverride::default()
        })
        .expect("read eviction");
    for (recall, want) in [
        (Recall::On, (BankEviction::Read, Some(2))),
        (Recall::Off, (BankEviction::Oldest, None)),
    ] {
        let (config, _) = read
            .config_for(RopeMethod::Trained, recall, 16)
            .expect("config");
        let m = config.memory.expect("memory");
        assert_eq!((m.bank_eviction, m.bank_recent_steps), want, "{recall:?}");
    }
    assert!(matches!(
        tiny_memory_factory(11).with_memory_settings(&MemoryOverride {
            bank_recent_steps: Some(12),
            ..MemoryOverride::default()
        }),
        Err(Error::Runtime(_))
    ));

    let plain = tiny_model_config().init_seeded::<B>(11, &Default::default());
    let factory = ModelFactory::new(plain, None, sim::training_preprocess(), &device);
    let off = EvalConfig {
        recall: Recall::Off,
        ..s.baseline().expect("baseline")
    };
    assert!(matches!(
        factory.build(&off, 16).map(|_| ()),
        Err(Error::Input { what: "recall", .. })
    ));
    assert!(matches!(
        factory.with_bank_steps(40),
        Err(Error::Input {
            what: "memory bank settings",
            ..
        })
    ));
}

/// A configuration the model rejects fails the sweep before any episode runs: a byte budget
/// that holds a memory model's window at int8 (the baseline) but not at f32 (the second
/// configuration) is a clear error naming the budget, and the progress never counts an episode.
#[test]
fn a_rejected_configuration_fails_before_any_episode() {
    let factory = tiny_memory_factory(12);
    let mut s = spec(vec![16], vec![0.0, 1.0], 2);
    s.train_length = 16;
    s.methods = vec![RopeMethod::Trained];
    s.dtypes = vec![KvDtype::Int8, KvDtype::F32];
    let window = Budget::Window(3);
    let (config, _) = factory
        .config_for(RopeMethod::Trained, Recall::On, 16)
        .expect("config");
    let int8 = window.bytes(&config, KvDtype::Int8, 0);
    assert!(int8 < window.bytes(&config, KvDtype::F32, 0));
    s.budgets = vec![Budget::Bytes(int8)];
    let mut most = 0;
    let err = run_sweep(&s, &tiny_task(), &factory, 1, &mut |p| {
        most = most.max(p.episodes_done);
    })
    .expect_err("f32 cannot hold the window in the int8 budget");
    assert!(format!("{err}").contains("budget_bytes"), "{err}");
    assert_eq!(most, 0, "episodes ran before the error");
    // The int8 configuration alone runs.
    s.dtypes = vec![KvDtype::Int8];
    let cells = run_sweep(&s, &tiny_task(), &factory, 1, &mut |_| {}).expect("int8 sweep");
    assert_eq!(cells.iter().map(|c| c.episodes).sum::<usize>(), 4);
}

fn edge_rope() -> runtime::rope::RopeConfig {
    VlaConfig::from_toml(configs::model_preset("edge").expect("edge").text)
        .expect("edge config")
        .rope
}

/// Factors and frequencies per method against hand-computed values (tolerance 1e-12
/// relative: the same f64 formulas).
#[test]
fn rope_per_length_follows_the_method() {
    let trained = edge_rope(); // default RoPE, 2048 tokens, head_dim 32, theta 1e4
    let original = original_context(&trained);
    assert_eq!(original, 2048);
    let tokens = 8192;
    let base = trained.base_inv_freq();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1e-30);

    let (pi, f) = rope_for_length(RopeMethod::Pi, &trained, original, tokens);
    assert!(close(f, 4.0));
    assert!(pi.max_position_embeddings >= tokens);
    for (s, b) in pi.frequencies(None).inv_freq.iter().zip(&base) {
        assert!(close(*s, b / 4.0));
    }

    let (ntk, _) = rope_for_length(RopeMethod::Ntk, &trained, original, tokens);
    assert!(close(ntk.rope_theta, 1e4 * 4f64.powf(32.0 / 30.0)));
    // The highest frequency is kept, the lowest divided by exactly the factor.
    let f_ntk = ntk.frequencies(None).inv_freq;
    assert!(close(f_ntk[0], base[0]));

    let (yarn, _) = rope_for_length(RopeMethod::Yarn, &trained, original, tokens);
    match &yarn.scaling {
        RopeScaling::Yarn(y) => {
            assert!(close(y.factor, 4.0));
            assert_eq!(y.original_max_position_embeddings, 2048);
        }
        other => panic!("expected yarn, got {other:?}"),
    }
    assert!(close(
        yarn.frequencies(None).attention_factor,
        0.1 * 4f64.ln() + 1.0
    ));

    let (dynamic, _) = rope_for_length(RopeMethod::Dynamic, &trained, original, tokens);
    assert_eq!(dynamic.max_position_embeddings, 2048);
    assert_eq!(dynamic.frequencies(Some(2048)).inv_freq, base);

    let (none, f) = rope_for_length(RopeMethod::None, &trained, original, 1000);
    assert!(close(f, 1.0));
    assert_eq!(none.frequencies(None).inv_freq, base);
    let (same, _) = rope_for_length(RopeMethod::Trained, &trained, original, tokens);
    assert_eq!(same, trained);
}

#[test]
fn wilson_interval_matches_known_values() {
    // Reference values from the closed form (e.g. statsmodels proportion_confint method="wilson").
    let (lo, hi) = wilson(5, 10, Z95);
    assert!((lo - 0.236_593).abs() < 1e-5 && (hi - 0.763_407).abs() < 1e-5);
    let (lo, hi) = wilson(0, 10, Z95);
    assert!(lo.abs() < 1e-12 && (hi - 0.277_533).abs() < 1e-5);
    let (lo, hi) = wilson(10, 10, Z95);
    assert!((lo - 0.722_467).abs() < 1e-5 && (hi - 1.0).abs() < 1e-12);
    assert_eq!(wilson(0, 0, Z95), (0.0, 1.0));
}

/// A seeded tiny random model with a memory (a 12-step bank, a 3-step window).
fn tiny_memory_factory(seed: u64) -> ModelFactory<B> {
    let mut c = tiny_model_config();
    c.memory = Some(runtime::model::MemoryConfig {
        bank_steps: 12,
        window_steps: 3,
        bank_log_scale: None,
        bank_top_k: None,
        bank_eviction: Default::default(),
        bank_recent_steps: None,
    });
    let model = c.init_seeded::<B>(seed, &Default::default());
    ModelFactory::new(model, None, sim::training_preprocess(), &Default::default())
}

fn tiny_model_config() -> VlaConfig {
    VlaConfig::from_toml(configs::model_preset("tiny").expect("tiny preset").text)
        .expect("tiny config")
}

fn tiny_task() -> TaskConfig {
    TaskConfig::from_toml(
        "episode_steps = 16\ncue_start = [1, 1]\ncue_steps = 1\ngo_delay = [1, 2]\nreach_steps = 11\n",
    )
    .expect("short task")
}

/// A tiny random model through every axis of the sweep (methods, dtypes, eviction), then
/// the outputs: the CSV parses back with one row per cell, the markdown has its tables and
/// every PNG decodes at the size the heatmap module promises.
#[test]
fn model_sweep_writes_parseable_csv_markdown_and_pngs() {
    let device = Default::default();
    let model = tiny_model_config().init_seeded::<B>(9, &Default::default());
    let factory = ModelFactory::new(model, None, sim::training_preprocess(), &device);
    assert_eq!(factory.original(), 256);
    let s = SweepSpec {
        lengths: vec![16, 32],
        depths: vec![0.0, 1.0],
        episodes: 1,
        seed: 3,
        methods: vec![RopeMethod::Yarn, RopeMethod::None],
        dtypes: vec![KvDtype::F32, KvDtype::Int8],
        budgets: vec![Budget::Full, Budget::Window(4)],
        recalls: vec![Recall::On],
        design: Design::Axes,
        train_length: 16,
    };
    let cells = run_sweep(&s, &tiny_task(), &factory, 2, &mut |_| {}).expect("sweep");
    assert_eq!(cells.len(), 4 * 2 * 2);
    for c in &cells {
        assert_eq!(c.episodes, 1);
        assert!(c.cue_correct.is_some(), "the tiny model has a cue head");
        let setup = c.setup;
        let tokens = 64 + c.length * 49 + 1;
        assert_eq!(setup.tokens, Some(tokens));
        let factor = setup.rope_factor.expect("factor");
        assert!((factor - (tokens as f64 / 256.0)).abs() < 1e-9);
        let frames = setup.cache_frames.expect("frames");
        match c.config.budget {
            Budget::Window(4) => assert_eq!(frames, 4),
            _ => assert_eq!(frames, c.length),
        }
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let meta = ReportMeta {
        command: "edgevla eval --quick".into(),
        seed: 3,
        policy: "tiny random model".into(),
        train_length: 16,
        original_context: Some(256),
        baseline: s.baseline().expect("baseline"),
        seconds: 1.0,
    };
    let written = report::write_all(dir.path(), &cells, &meta).expect("outputs");
    // csv + md + (success + cue) per config
    assert_eq!(written.len(), 2 + 2 * 4);

    let text = std::fs::read_to_string(dir.path().join("cells.csv")).expect("csv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(CSV_HEADER.join(",").as_str()));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), cells.len());
    for (row, cell) in rows.iter().zip(&cells) {
        assert_eq!(row.len(), CSV_HEADER.len());
        assert_eq!(row[0], cell.config.method.name());
        assert_eq!(row[3], "on");
        assert_eq!(row[6], "", "no bank: the tiny model has no memory");
        assert_eq!(row[7].parse::<usize>().ok(), Some(cell.length));
        assert_eq!(row[8].parse::<usize>().ok(), Some(cell.length - 11));
        let rate: f64 = row[14].parse().expect("rate");
        let (lo, hi): (f64, f64) = (row[15].parse().expect("lo"), row[16].parse().expect("hi"));
        assert!(lo <= rate && rate <= hi);
        assert!(row[18].parse::<f64>().is_ok(), "cue recall present");
    }

    let md = std::fs::read_to_string(dir.path().join("results.md")).expect("md");
    for needle in [
        "reproduce: `edgevla eval --quick` (seed 3)",
        "## Success by length x RoPE method",
        "## KV cache format",
        "Delta vs f32",
        "## KV budget",
        "window:4",
        "## Depth x length, best method",
        "heatmap_success_yarn_f32_full.png",
    ] {
        assert!(md.contains(needle), "results.md lacks {needle:?}:\n{md}");
    }

    let (w, h) = heatmap::size(2, 2);
    for path in written
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
    {
        let img = image::open(path).expect("png decodes").to_rgb8();
        assert_eq!(img.dimensions(), (w, h), "{}", path.display());
        // Not blank: the cells are colored.
        let px = img.get_pixel(heatmap::LEFT + 4, heatmap::TOP + 4);
        assert_ne!(px.0, [255, 255, 255]);
    }
}

/// A model cell (trained RoPE, int8 cache evicting down to 2 frame-steps) runs whole episodes
/// through the streaming path, and `start` resets the stream: the same episode twice gives the
/// same outcome.
#[test]
fn model_policy_runs_the_streaming_path() {
    let device = Default::default();
    let model = tiny_model_config().init_seeded::<B>(10, &Default::default());
    let factory = ModelFactory::new(model, None, sim::training_preprocess(), &device);
    let config = EvalConfig {
        method: RopeMethod::Trained,
        dtype: KvDtype::Int8,
        budget: Budget::Window(2),
        recall: Recall::On,
    };
    let mut policy = factory.build(&config, 16).expect("policy");
    let task = sim::Task::new(&tiny_task()).expect("task");
    let sim = sim::Sim::needle_with_task(task, 5, 0.5, 5).expect("sim");
    let a = super::run_episode(policy.as_mut(), sim.clone(), 5).expect("episode");
    assert_eq!(a.steps, 16);
    assert!(a.cue_correct.is_some());
    let b = super::run_episode(policy.as_mut(), sim, 5).expect("again");
    assert_eq!(a, b, "start() resets the stream");
}

#[test]
fn heatmap_colors_run_dark_to_bright() {
    let lum = |c: plotters::style::RGBColor| {
        0.2126 * f64::from(c.0) + 0.7152 * f64::from(c.1) + 0.0722 * f64::from(c.2)
    };
    let mut prev = -1.0;
    for i in 0..=10 {
        let l = lum(heatmap::color(f64::from(i) / 10.0));
        assert!(l > prev, "viridis is monotone in luminance");
        prev = l;
    }
}
