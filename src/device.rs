//! Device names on the command line: `cpu`, `cuda` and `cuda:N` name one device; `cpu:N` (N
//! shards on the CPU) and `cuda:I,J,...` name the devices of a ring.

use anyhow::{Context, Result, bail};

/// One device: `None` for the CPU, `Some(i)` for CUDA device i.
///
/// # Errors
/// Anything but `cpu`, `cuda` or `cuda:N`.
pub(crate) fn parse_device(spec: &str) -> Result<Option<usize>> {
    match parse_devices(spec) {
        Ok((false, ids)) if ids.len() == 1 && spec == "cpu" => Ok(None),
        Ok((true, ids)) if ids.len() == 1 => Ok(Some(ids[0])),
        _ => bail!("--device {spec}: expected cpu, cuda or cuda:N"),
    }
}

/// Parses `cpu`, `cpu:N`, `cuda`, `cuda:I` or `cuda:I,J,...` into (is CUDA, device indices).
///
/// # Errors
/// Malformed names, `cpu:0`, an empty or repeated CUDA list.
pub(crate) fn parse_devices(spec: &str) -> Result<(bool, Vec<usize>)> {
    let bad = || format!("device `{spec}`: expected cpu, cpu:N, cuda, cuda:N or cuda:I,J,...");
    if spec == "cpu" {
        return Ok((false, vec![0]));
    }
    if spec == "cuda" {
        return Ok((true, vec![0]));
    }
    if let Some(n) = spec.strip_prefix("cpu:") {
        let n: usize = n.parse().with_context(bad)?;
        if n == 0 {
            bail!("{}", bad());
        }
        return Ok((false, vec![0; n]));
    }
    let list = spec.strip_prefix("cuda:").with_context(bad)?;
    let ids: Vec<usize> = list
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .with_context(bad)?;
    let mut seen = ids.clone();
    seen.sort_unstable();
    seen.dedup();
    if ids.is_empty() || seen.len() != ids.len() {
        bail!("{} (each device once)", bad());
    }
    Ok((true, ids))
}

/// The CUDA devices `ids`, checked against the devices present.
///
/// # Errors
/// An index past the machine's device count.
#[cfg(feature = "cuda")]
pub(crate) fn cuda_devices(ids: &[usize]) -> Result<Vec<burn::backend::cuda::CudaDevice>> {
    use burn::backend::{Cuda, cuda::CudaDevice};
    use burn::tensor::backend::Backend;
    let available = <Cuda<f32, i32> as Backend>::device_count(0);
    if let Some(bad) = ids.iter().find(|&&i| i >= available) {
        bail!("cuda:{bad} does not exist: this machine has {available} CUDA device(s)");
    }
    Ok(ids.iter().map(|&index| CudaDevice { index }).collect())
}

/// Waits until every device in `devices` has finished its queued work (timing, transfers).
///
/// # Errors
/// The backend's report if a device fails.
pub(crate) fn sync<B: burn::tensor::backend::Backend>(devices: &[B::Device]) -> Result<()> {
    for device in devices {
        B::sync(device).map_err(|e| anyhow::anyhow!("device sync: {e:?}"))?;
    }
    Ok(())
}

/// CUDA device `index`, checked against the devices present.
///
/// # Errors
/// An index past the machine's device count.
#[cfg(feature = "cuda")]
pub(crate) fn cuda_device(index: usize) -> Result<burn::backend::cuda::CudaDevice> {
    cuda_devices(&[index])?
        .pop()
        .with_context(|| format!("cuda:{index}: no such device"))
}

/// The error for a CUDA device asked of a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub(crate) fn no_cuda(index: usize) -> anyhow::Error {
    anyhow::anyhow!(
        "cuda:{index}: this edgevla was built without the `cuda` feature (cargo build --release --features cuda)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!(parse_device("cpu").ok(), Some(None));
        assert_eq!(parse_device("cuda").ok(), Some(Some(0)));
        assert_eq!(parse_device("cuda:3").ok(), Some(Some(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "cpu:2", "cuda:0,1", ""] {
            let err = parse_device(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("expected cpu, cuda or cuda:N"), "{bad}: {err}");
        }
        assert_eq!(parse_devices("cpu:3").ok(), Some((false, vec![0, 0, 0])));
        assert_eq!(parse_devices("cuda:0, 2").ok(), Some((true, vec![0, 2])));
        for bad in ["cpu:0", "cuda:1,1", "cuda:1,", "tpu:2"] {
            assert!(parse_devices(bad).is_err(), "{bad}");
        }
    }
}
