//! Checked f32 matrix products on the host through the [`gemm`](https://docs.rs/gemm) crate
//! (runtime-dispatched AVX-512 / AVX2 / NEON kernels, optional rayon threads).
//!
//! `gemm` takes raw pointers and strides; this module is the one place in the runtime that
//! calls it, and [`matmul`] checks every operand against its slice before it does, so callers
//! stay in safe code. All matrices here are row-major views: element `(r, c)` of a [`Mat`] is
//! `data[r * row_stride + c * col_stride]`.
#![allow(unsafe_code)]

use crate::error::{Error, Result};

/// A read-only matrix view.
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// `rows × cols`, row-major with `row_stride` values between rows (≥ `cols`).
    pub fn rows(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major `cols × rows` matrix with `row_stride` values per row: a
    /// `rows × cols` view whose columns are the stored rows.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: 1,
            col_stride: row_stride,
        }
    }

    /// Whether every element index lies inside the slice.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1)
                .checked_mul(self.row_stride)
                .zip((self.cols - 1).checked_mul(self.col_stride))
                .and_then(|(a, b)| a.checked_add(b))
                .is_some_and(|last| last < self.data.len())
    }
}

/// A writable row-major matrix view (`row_stride` ≥ `cols`, so no two elements alias).
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a> MatMut<'a> {
    /// `rows × cols`, row-major with `row_stride` values between rows.
    pub fn rows(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
        }
    }
}

/// Threads a product may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// The calling thread only (inside work that is already parallel).
    One,
    /// The rayon pool.
    Pool,
}

/// What happens to the destination's previous contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// `dst = lhs · rhs`.
    Overwrite,
    /// `dst += lhs · rhs`.
    Accumulate,
}

/// `dst (=|+=) lhs · rhs`.
///
/// # Errors
/// [`Error::Shape`] if the shapes do not chain (`lhs` `m × k`, `rhs` `k × n`, `dst` `m × n`),
/// a view reaches past its slice, or `dst`'s row stride is below its width.
pub fn matmul(
    dst: MatMut<'_>,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    write: Write,
    threads: Threads,
) -> Result<()> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let dst_view = Mat {
        data: dst.data,
        rows: dst.rows,
        cols: dst.cols,
        row_stride: dst.row_stride,
        col_stride: 1,
    };
    if rhs.rows != k
        || dst.rows != m
        || dst.cols != n
        || (m > 1 && dst.row_stride < n)
        || !lhs.in_bounds()
        || !rhs.in_bounds()
        || !dst_view.in_bounds()
    {
        return Err(Error::shape(
            "matmul",
            format!(
                "[{m} × {k}] · [{} × {n}] into [{} × {}] (row stride {})",
                rhs.rows, dst.rows, dst.cols, dst.row_stride
            ),
        ));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if write == Write::Overwrite {
            for r in 0..m {
                dst.data[r * dst.row_stride..r * dst.row_stride + n].fill(0.0);
            }
        }
        return Ok(());
    }
    let parallelism = match threads {
        Threads::One => gemm::Parallelism::None,
        Threads::Pool => gemm::Parallelism::Rayon(rayon::current_num_threads()),
    };
    let as_isize = |v: usize| v as isize; // bounded by the slice lengths checked above
    // SAFETY: every element (r, c) the product reads or writes lies inside its slice (checked
    // by `in_bounds` with the same strides and sizes); `dst` is borrowed mutably, so it
    // aliases neither operand, and its row stride ≥ n with unit column stride keeps its
    // elements distinct, so gemm's threads never write the same element.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            as_isize(dst.row_stride),
            write == Write::Accumulate,
            lhs.data.as_ptr(),
            as_isize(lhs.col_stride),
            as_isize(lhs.row_stride),
            rhs.data.as_ptr(),
            as_isize(rhs.col_stride),
            as_isize(rhs.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::uniform_f32;

    fn reference(m: usize, k: usize, n: usize, a: &[f32], b: &[f32]) -> Vec<f64> {
        let mut out = vec![0.0f64; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k)
                    .map(|i| f64::from(a[r * k + i]) * f64::from(b[i * n + c]))
                    .sum();
            }
        }
        out
    }

    /// Products of the sizes the model uses (and odd ones), plain and with a transposed rhs,
    /// overwrite and accumulate, one thread and the pool: ≤ 1e-5 relative against f64.
    #[test]
    fn matmul_matches_f64() {
        for (m, k, n) in [
            (1, 1, 1),
            (53, 256, 384),
            (212, 32, 256),
            (212, 256, 32),
            (7, 33, 5),
        ] {
            let a = uniform_f32(1, m * k);
            let b = uniform_f32(2, k * n);
            // b stored transposed: bt[c * k + i] = b[i * n + c].
            let mut bt = vec![0.0; k * n];
            for i in 0..k {
                for c in 0..n {
                    bt[c * k + i] = b[i * n + c];
                }
            }
            let want = reference(m, k, n, &a, &b);
            let scale = want.iter().fold(1e-9f64, |s, v| s.max(v.abs()));
            for threads in [Threads::One, Threads::Pool] {
                for transposed in [false, true] {
                    let rhs = if transposed {
                        Mat::transposed(&bt, k, n, k)
                    } else {
                        Mat::rows(&b, k, n, n)
                    };
                    // The destination starts at 1: accumulate must add to it, overwrite not.
                    for (write, start) in [(Write::Accumulate, 1.0), (Write::Overwrite, 0.0)] {
                        let mut dst = vec![1.0f32; m * n];
                        matmul(
                            MatMut::rows(&mut dst, m, n, n),
                            Mat::rows(&a, m, k, k),
                            rhs,
                            write,
                            threads,
                        )
                        .expect("matmul");
                        assert!(
                            dst.iter().all(|x| x.is_finite()),
                            "{m}x{k}x{n} {write:?}: not finite"
                        );
                        let err = dst
                            .iter()
                            .zip(&want)
                            .fold(0.0f64, |e, (d, w)| e.max((f64::from(*d) - start - w).abs()));
                        assert!(err / scale <= 1e-5, "{m}x{k}x{n} {write:?}: {err:e}");
                    }
                }
            }
        }
    }

    #[test]
    fn out_of_bounds_views_are_errors() {
        let a = vec![0.0; 6];
        let mut d = vec![0.0; 4];
        // lhs claims 3 × 3 from 6 values.
        let err = matmul(
            MatMut::rows(&mut d, 3, 1, 1),
            Mat::rows(&a, 3, 3, 3),
            Mat::rows(&a, 3, 1, 1),
            Write::Overwrite,
            Threads::One,
        );
        assert!(matches!(err, Err(Error::Shape { .. })), "{err:?}");
        // Shapes that do not chain.
        let err = matmul(
            MatMut::rows(&mut d, 2, 2, 2),
            Mat::rows(&a, 2, 3, 3),
            Mat::rows(&a, 2, 2, 2),
            Write::Overwrite,
            Threads::One,
        );
        assert!(matches!(err, Err(Error::Shape { .. })), "{err:?}");
        // A destination whose rows overlap.
        let err = matmul(
            MatMut::rows(&mut d, 2, 2, 1),
            Mat::rows(&a, 2, 1, 1),
            Mat::rows(&a, 1, 2, 2),
            Write::Overwrite,
            Threads::One,
        );
        assert!(matches!(err, Err(Error::Shape { .. })), "{err:?}");
    }
}
