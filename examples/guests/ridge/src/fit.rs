//! The ridge fit itself, over plain slices: the guest's `fit_score` calls it on pinned
//! data, and the host's benchmark (`stockade bench --ridge`) compiles this same file
//! natively to time the computation outside the sandbox.

use serde::Serialize;
use stockade_guest::Matrix;

/// The fitted model and its score on the test rows.
#[derive(Debug, Serialize, PartialEq)]
pub struct Fitted {
    /// R² on the test rows.
    pub score: f64,
    /// The intercept.
    pub intercept: f64,
    /// One coefficient per column of `x`.
    pub coef: Vec<f64>,
}

/// Ridge regression with an intercept on rows `train` of `x`, `y`, scored on `test`.
///
/// # Errors
///
/// When the shapes or indices do not fit, `alpha` is not positive, or the system cannot
/// be solved.
pub fn fit_and_score(x: &Matrix<'_>, y: &[f64], alpha: f64, train: &[usize], test: &[usize]) -> Result<Fitted, String> {
    if y.len() != x.rows {
        return Err(format!("x has {} rows but y has {} values", x.rows, y.len()));
    }
    if let Some(row) = train.iter().chain(test).find(|&&row| row >= x.rows) {
        return Err(format!("row {row} is out of range: x has {} rows", x.rows));
    }
    if x.cols == 0 {
        return Err("x has no columns".to_string());
    }
    if train.is_empty() || test.is_empty() {
        return Err("train and test must both name at least one row".to_string());
    }
    if alpha.is_nan() || alpha <= 0.0 {
        return Err(format!("alpha must be positive, got {alpha}"));
    }
    let d = x.cols;
    let n = train.len() as f64;
    // Centre on the training means, so the intercept is not penalised.
    let mut x_mean = vec![0.0; d];
    for &row in train {
        x_mean.iter_mut().zip(x.row(row)).for_each(|(m, v)| *m += v / n);
    }
    let y_mean = train.iter().map(|&row| y[row]).sum::<f64>() / n;
    // The normal equations (XᵀX + αI) w = Xᵀy on centred data.
    let mut normal = Normal { d, gram: vec![0.0; d * d], rhs: vec![0.0; d], centred: vec![0.0; ROWS * d] };
    let mut groups = train.chunks_exact(ROWS);
    for group in &mut groups {
        normal.add_rows::<ROWS>(x, y, (&x_mean, y_mean), group);
    }
    for row in groups.remainder() {
        normal.add_rows::<1>(x, y, (&x_mean, y_mean), std::slice::from_ref(row));
    }
    let Normal { mut gram, rhs, .. } = normal;
    for i in 0..d {
        gram[i * d + i] += alpha;
    }
    let coef = cholesky_solve(&mut gram, rhs, d)?;
    let intercept = y_mean - coef.iter().zip(&x_mean).map(|(w, m)| w * m).sum::<f64>();
    let predict = |row: usize| intercept + dot(&coef, x.row(row));
    let test_mean = test.iter().map(|&row| y[row]).sum::<f64>() / test.len() as f64;
    let residual: f64 = test.iter().map(|&row| (y[row] - predict(row)).powi(2)).sum();
    let total: f64 = test.iter().map(|&row| (y[row] - test_mean).powi(2)).sum();
    // scikit-learn's r2_score for constant targets: 1 if predicted exactly, else 0.
    let score = match (total == 0.0, residual == 0.0) {
        (false, _) => 1.0 - residual / total,
        (true, true) => 1.0,
        (true, false) => 0.0,
    };
    Ok(Fitted { score, intercept, coef })
}

/// Training rows added to the Gram matrix per pass over it.
const ROWS: usize = 4;

/// Elements per step of [`add_scaled`].
const BLOCK: usize = 8;

/// The normal equations being summed up over the training rows, and scratch room for
/// [`ROWS`] centred rows.
struct Normal {
    d: usize,
    /// XᵀX, lower triangle (row-major `d × d`).
    gram: Vec<f64>,
    /// Xᵀy.
    rhs: Vec<f64>,
    centred: Vec<f64>,
}

impl Normal {
    /// Adds `R` training rows (centred on `means`): each entry of the Gram matrix is read
    /// and written once for all of them, and sums them in row order, so the result is the
    /// same as adding the rows one by one.
    fn add_rows<const R: usize>(&mut self, x: &Matrix<'_>, y: &[f64], means: (&[f64], f64), rows: &[usize]) {
        let (d, (x_mean, y_mean)) = (self.d, means);
        for (centred, &row) in self.centred.chunks_exact_mut(d).zip(rows) {
            centred.iter_mut().zip(x.row(row)).zip(x_mean).for_each(|((c, v), m)| *c = v - m);
            let target = y[row] - y_mean;
            self.rhs.iter_mut().zip(&*centred).for_each(|(r, c)| *r += c * target);
        }
        let rows: [&[f64]; R] = std::array::from_fn(|r| &self.centred[r * d..(r + 1) * d]);
        // Each row of the lower triangle, rounded up to whole blocks: the few entries
        // past the diagonal are never read (the solver uses the lower triangle).
        for (i, gram_row) in self.gram.chunks_exact_mut(d).enumerate() {
            let width = (i + 1).next_multiple_of(BLOCK).min(d);
            add_scaled(&mut gram_row[..width], rows.map(|row| row[i]), rows.map(|row| &row[..width]));
        }
    }
}

/// `acc += scales[0] * xs[0] + scales[1] * xs[1] + ...`, element by element, the terms
/// added in order (each `xs[r]` at least as long as `acc`).
///
/// Work per loop iteration is what keeps the sandbox's wall-time checks cheap: wasmtime
/// 48 checks the epoch at every loop header, and Cranelift spills the loop's registers
/// around that check. So [`BLOCK`] elements of [`ROWS`] rows per step (sixteen two-lane
/// SIMD multiply-adds in the guest, built with simd128). Measured by `stockade bench
/// --ridge`: the checks cost +160 % with one vector per iteration, +30 % with one row of
/// 8 elements, +20 % with 4 rows (8 rows spill the scales and run slower overall), and
/// with the reductions in [`dot`] as well, +14-15 % for the whole fit.
fn add_scaled<const R: usize>(acc: &mut [f64], scales: [f64; R], xs: [&[f64]; R]) {
    let len = acc.len();
    let xs = xs.map(|x| &x[..len]);
    let mut blocks = acc.chunks_exact_mut(BLOCK);
    let mut start = 0;
    for block in &mut blocks {
        let parts = xs.map(|x| &x[start..start + BLOCK]);
        for k in 0..BLOCK {
            let mut value = block[k];
            for r in 0..R {
                value += scales[r] * parts[r][k];
            }
            block[k] = value;
        }
        start += BLOCK;
    }
    for (k, value) in blocks.into_remainder().iter_mut().enumerate() {
        for r in 0..R {
            *value += scales[r] * xs[r][start + k];
        }
    }
}

/// `a · b` over their common length, in [`LANES`] running sums (added up at the end).
///
/// A plain `sum()` of products is a chain of dependent additions that the compiler may
/// not reorder, so it runs one element per loop iteration, and in the sandbox every
/// iteration also pays an epoch check (the WAT dot loop of `stockade bench --sandbox`
/// shows that cost at over +100 %). Four sums take four elements per iteration.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    let mut sums = [0.0; LANES];
    let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (rest_a, rest_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (xs, ys) in chunks_a.zip(chunks_b) {
        for k in 0..LANES {
            sums[k] += xs[k] * ys[k];
        }
    }
    let tail: f64 = rest_a.iter().zip(rest_b).map(|(x, y)| x * y).sum();
    (sums[0] + sums[1]) + (sums[2] + sums[3]) + tail
}

/// Running sums of [`dot`].
const LANES: usize = 4;

/// Solves `a w = b` for a symmetric positive definite `a` (its lower triangle, row-major
/// `d × d`), by Cholesky factorisation in place.
fn cholesky_solve(a: &mut [f64], mut b: Vec<f64>, d: usize) -> Result<Vec<f64>, String> {
    for j in 0..d {
        let row_j = &a[j * d..j * d + j];
        let diagonal = a[j * d + j] - dot(row_j, row_j);
        if diagonal.is_nan() || diagonal <= 0.0 {
            return Err("the regularised normal equations are not positive definite".to_string());
        }
        let pivot = diagonal.sqrt();
        a[j * d + j] = pivot;
        for i in j + 1..d {
            let sum = dot(&a[i * d..i * d + j], &a[j * d..j * d + j]);
            a[i * d + j] = (a[i * d + j] - sum) / pivot;
        }
    }
    // L z = b, then Lᵀ w = z.
    for i in 0..d {
        b[i] = (b[i] - dot(&a[i * d..i * d + i], &b[..i])) / a[i * d + i];
    }
    for i in (0..d).rev() {
        b[i] = (b[i] - (i + 1..d).map(|k| a[k * d + i] * b[k]).sum::<f64>()) / a[i * d + i];
    }
    Ok(b)
}
