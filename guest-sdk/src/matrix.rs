//! Numeric arrays inside pinned Python objects, viewed in place.
//!
//! A numpy array pinned from Python is a [`Scattered`](crate::archive::Scattered) object
//! whose out-of-band buffers hold the array's bytes with its `dtype` and `shape`. This
//! module views a float64 array (`dtype.str == "<f8"`, C order, one or two dimensions)
//! as a row-major [`Matrix`] without copying it.

use crate::archive::{ArchivedBuffer, ArchivedObject, Scattered};
use crate::{pinned, Key, PinError};

/// A dense row-major matrix of `f64` borrowed from a pinned archive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Matrix<'a> {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns (1 for a one-dimensional array).
    pub cols: usize,
    /// The `rows * cols` values, row after row.
    pub data: &'a [f64],
}

impl<'a> Matrix<'a> {
    /// Row `i`.
    ///
    /// # Panics
    ///
    /// When `i >= rows`.
    pub fn row(&self, i: usize) -> &'a [f64] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The value at row `i`, column `j`.
    ///
    /// # Panics
    ///
    /// When `i >= rows` or `j >= cols`.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.row(i)[j]
    }

    /// Views an out-of-band buffer as a matrix.
    ///
    /// # Errors
    ///
    /// [`ArrayError`] when the buffer is not a float64 array of one or two dimensions
    /// whose shape matches its length.
    pub fn from_buffer(buffer: &'a ArchivedBuffer<Vec<u8>>) -> Result<Self, ArrayError> {
        let dtype = buffer.dtype.as_str();
        if dtype != FLOAT64 || cfg!(target_endian = "big") {
            return Err(ArrayError::Dtype { dtype: dtype.to_string() });
        }
        let shape: Vec<u64> = buffer.shape.iter().map(|d| d.to_native()).collect();
        let shape_error = || ArrayError::Shape { shape: shape.clone(), bytes: buffer.data.len() };
        let (rows, cols) = match shape.as_slice() {
            [n] => (*n, 1),
            [rows, cols] => (*rows, *cols),
            _ => return Err(shape_error()),
        };
        let data: &[f64] = bytemuck::try_cast_slice(buffer.data.as_slice()).map_err(|_| shape_error())?;
        let (rows, cols) =
            (usize::try_from(rows).map_err(|_| shape_error())?, usize::try_from(cols).map_err(|_| shape_error())?);
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(shape_error());
        }
        Ok(Matrix { rows, cols, data })
    }

    /// The only array of a pinned object.
    ///
    /// # Errors
    ///
    /// [`ArrayError::Buffers`] unless the object has exactly one out-of-band buffer, and
    /// the errors of [`from_buffer`](Self::from_buffer).
    pub fn from_object(object: &'a ArchivedObject) -> Result<Self, ArrayError> {
        match object.buffers.as_slice() {
            [buffer] => Self::from_buffer(buffer),
            buffers => Err(ArrayError::Buffers { count: buffers.len() }),
        }
    }
}

/// numpy's `dtype.str` of little-endian float64.
const FLOAT64: &str = "<f8";

/// The float64 array pinned under `key` (a numpy array scattered from Python), viewed as
/// a matrix; a one-dimensional array has one column.
///
/// # Errors
///
/// [`ArrayError::Pin`] when nothing valid is pinned under `key`, and the errors of
/// [`Matrix::from_object`].
pub fn pinned_matrix(key: &Key) -> Result<Matrix<'static>, ArrayError> {
    Matrix::from_object(pinned::<Scattered<Vec<u8>>>(key)?)
}

/// Why a pinned object is not a float64 matrix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArrayError {
    /// The object could not be read.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// The object does not hold exactly one array (pin the array itself, not a
    /// container of arrays, and make it contiguous first).
    #[error("the pinned object holds {count} out-of-band buffers, not exactly one array")]
    Buffers {
        /// How many buffers it holds.
        count: usize,
    },
    /// The array is not float64 (convert it with `astype(np.float64)` before pinning).
    #[error("the array's dtype is {dtype:?}, not \"<f8\" (float64)")]
    Dtype {
        /// numpy's `dtype.str` of the array.
        dtype: String,
    },
    /// The shape has not one or two dimensions, or does not match the bytes.
    #[error("the array's shape {shape:?} does not fit its {bytes} bytes as a float64 matrix")]
    Shape {
        /// The shape.
        shape: Vec<u64>,
        /// The length of the buffer in bytes.
        bytes: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{Buffer, Scattered};

    fn archive(buffers: Vec<Buffer<Vec<u8>>>) -> rkyv::util::AlignedVec {
        rkyv::to_bytes::<rkyv::rancor::Error>(&Scattered { pickle: b"pickle".to_vec(), buffers }).unwrap()
    }

    fn floats(values: &[f64]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn a_float64_array_is_a_matrix() {
        let values: Vec<f64> = (0..6).map(f64::from).collect();
        let bytes = archive(vec![Buffer { data: floats(&values), dtype: "<f8".into(), shape: vec![2, 3] }]);
        let object = rkyv::access::<ArchivedObject, rkyv::rancor::Error>(&bytes).unwrap();
        let matrix = Matrix::from_object(object).unwrap();
        assert_eq!((matrix.rows, matrix.cols), (2, 3));
        assert_eq!(matrix.row(1), &[3.0, 4.0, 5.0]);
        assert_eq!(matrix.get(0, 2), 2.0);

        let bytes = archive(vec![Buffer { data: floats(&values), dtype: "<f8".into(), shape: vec![6] }]);
        let object = rkyv::access::<ArchivedObject, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(Matrix::from_object(object).unwrap().cols, 1);
    }

    #[test]
    fn other_arrays_are_refused_with_the_reason() {
        let cases = [
            (vec![], ArrayError::Buffers { count: 0 }),
            (
                vec![Buffer { data: vec![0; 8], dtype: "<i8".into(), shape: vec![1] }],
                ArrayError::Dtype { dtype: "<i8".into() },
            ),
            (
                vec![Buffer { data: floats(&[1.0, 2.0]), dtype: "<f8".into(), shape: vec![3] }],
                ArrayError::Shape { shape: vec![3], bytes: 16 },
            ),
            (
                vec![Buffer { data: floats(&[1.0]), dtype: "<f8".into(), shape: vec![1, 1, 1] }],
                ArrayError::Shape { shape: vec![1, 1, 1], bytes: 8 },
            ),
        ];
        for (buffers, expected) in cases {
            let bytes = archive(buffers);
            let object = rkyv::access::<ArchivedObject, rkyv::rancor::Error>(&bytes).unwrap();
            assert_eq!(Matrix::from_object(object), Err(expected));
        }
    }
}
