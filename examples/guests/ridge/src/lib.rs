//! Ridge regression, fitted and scored in the Stockade sandbox.
//!
//! Task `fit_score` fits ridge regression with an intercept (scikit-learn's `Ridge`
//! with `fit_intercept=True`) on the training rows of a pinned matrix `x` and targets
//! `y`, and scores it (R², as `Ridge.score`) on the test rows. `x` and `y` are numpy
//! float64 arrays pinned from Python (`client.scatter`), read in place:
//!
//! ```json
//! {"alpha": 1.0, "x": "<key of X>", "y": "<key of y>", "train": [0, 1, 2], "test": [3, 4]}
//! ```
//!
//! returns `{"score": 0.93, "intercept": 0.1, "coef": [...]}`.

use serde::{Deserialize, Serialize};
use stockade_guest::{pinned_matrix, task, Key, Matrix};

/// The input of `fit_score`.
#[derive(Debug, Deserialize)]
pub struct FitScore {
    /// The regularisation strength (> 0).
    pub alpha: f64,
    /// The pinned samples, one row each.
    pub x: Key,
    /// The pinned targets, one per row of `x`.
    pub y: Key,
    /// The rows to fit on.
    pub train: Vec<usize>,
    /// The rows to score on.
    pub test: Vec<usize>,
}

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

/// Fits on `train`, scores on `test`.
#[task]
fn fit_score(input: FitScore) -> Result<Fitted, String> {
    let x = pinned_matrix(&input.x).map_err(|err| format!("x: {err}"))?;
    let y = pinned_matrix(&input.y).map_err(|err| format!("y: {err}"))?;
    fit_and_score(&x, y.data, input.alpha, &input.train, &input.test)
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
    let mut gram = vec![0.0; d * d];
    let mut rhs = vec![0.0; d];
    let mut centred = vec![0.0; d];
    for &row in train {
        centred.iter_mut().zip(x.row(row)).zip(&x_mean).for_each(|((c, v), m)| *c = v - m);
        let target = y[row] - y_mean;
        for i in 0..d {
            rhs[i] += centred[i] * target;
            for j in 0..=i {
                gram[i * d + j] += centred[i] * centred[j];
            }
        }
    }
    for i in 0..d {
        gram[i * d + i] += alpha;
    }
    let coef = cholesky_solve(&mut gram, rhs, d)?;
    let intercept = y_mean - coef.iter().zip(&x_mean).map(|(w, m)| w * m).sum::<f64>();
    let predict = |row: usize| intercept + coef.iter().zip(x.row(row)).map(|(w, v)| w * v).sum::<f64>();
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

/// Solves `a w = b` for a symmetric positive definite `a` (its lower triangle, row-major
/// `d × d`), by Cholesky factorisation in place.
fn cholesky_solve(a: &mut [f64], mut b: Vec<f64>, d: usize) -> Result<Vec<f64>, String> {
    for j in 0..d {
        let diagonal = a[j * d + j] - (0..j).map(|k| a[j * d + k].powi(2)).sum::<f64>();
        if diagonal.is_nan() || diagonal <= 0.0 {
            return Err("the regularised normal equations are not positive definite".to_string());
        }
        let pivot = diagonal.sqrt();
        a[j * d + j] = pivot;
        for i in j + 1..d {
            let dot: f64 = (0..j).map(|k| a[i * d + k] * a[j * d + k]).sum();
            a[i * d + j] = (a[i * d + j] - dot) / pivot;
        }
    }
    // L z = b, then Lᵀ w = z.
    for i in 0..d {
        b[i] = (b[i] - (0..i).map(|k| a[i * d + k] * b[k]).sum::<f64>()) / a[i * d + i];
    }
    for i in (0..d).rev() {
        b[i] = (b[i] - (i + 1..d).map(|k| a[k * d + i] * b[k]).sum::<f64>()) / a[i * d + i];
    }
    Ok(b)
}
