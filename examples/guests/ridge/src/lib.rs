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

use serde::Deserialize;
use stockade_guest::{pinned_matrix, task, Key};

mod fit;
pub use fit::{fit_and_score, Fitted};

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

/// Fits on `train`, scores on `test`.
#[task]
fn fit_score(input: FitScore) -> Result<Fitted, String> {
    let x = pinned_matrix(&input.x).map_err(|err| format!("x: {err}"))?;
    let y = pinned_matrix(&input.y).map_err(|err| format!("y: {err}"))?;
    fit_and_score(&x, y.data, input.alpha, &input.train, &input.test)
}
