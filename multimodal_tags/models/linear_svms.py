"""Many linear SVMs on one sparse matrix: one per column of a multi-hot label matrix.

scikit-learn's LinearSVC hands liblinear a fresh copy of the whole matrix on every fit, in liblinear's
own row format; with hundreds of tags, that copy is about a fifth of the work (docs/performance.md).
Where the official liblinear binding (`liblinear-official`, the `fast` extra) is installed, each worker
process builds liblinear's problem once and solves every column it was given on it, changing only the
labels: the same solver and settings as LinearSVC (L2-regularised squared hinge, dual coordinate
descent, tolerance 1e-4, the intercept as a regularised feature of value 1), so the same SVMs up to the
solver's tolerance. Without it, LinearSVC fits each column.
"""
from __future__ import annotations

import ctypes

import numpy as np


def have_liblinear() -> bool:
    """Whether the official liblinear binding is installed (the shared-problem path)."""
    try:
        import liblinear.liblinear  # noqa: F401
    except (ImportError, OSError):  # OSError: the package is there but its compiled library is not
        return False
    return True


def _constant(y: np.ndarray, d: int) -> tuple[np.ndarray, float] | None:
    """A column every (or no) product has: a constant score and no weights; else None."""
    if y.min() == y.max():
        return np.zeros(d, np.float32), 1.0 if y[0] else -1.0
    return None


def _fit_sklearn(x, y: np.ndarray, c: float, tol: float) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.svm import LinearSVC

    weights, intercepts = np.zeros((y.shape[1], x.shape[1]), np.float32), np.zeros(y.shape[1], np.float32)
    for j in range(y.shape[1]):
        fixed = _constant(y[:, j], x.shape[1])
        if fixed is None:
            svm = LinearSVC(C=c, tol=tol, random_state=0).fit(x, y[:, j])  # seeded: its coordinate descent shuffles
            fixed = svm.coef_[0], float(svm.intercept_[0])
        weights[j], intercepts[j] = fixed
    return weights, intercepts


def _fit_liblinear(x, y: np.ndarray, c: float, tol: float) -> tuple[np.ndarray, np.ndarray]:
    from liblinear.liblinear import liblinear, parameter, problem, toPyModel

    n, d = x.shape
    prob = problem(np.zeros(n), x, bias=1)  # converted into liblinear's format once for every column
    param = parameter(f"-s 1 -c {c} -e {tol} -q")  # LinearSVC's solver, loss, tolerance and intercept
    labels = np.ctypeslib.as_array(prob.y, (n,))
    srand = ctypes.CDLL(None).srand  # liblinear shuffles with the C library's rand()
    weights, intercepts = np.zeros((y.shape[1], d), np.float32), np.zeros(y.shape[1], np.float32)
    for j in range(y.shape[1]):
        fixed = _constant(y[:, j], d)
        if fixed is None:
            labels[:] = np.where(y[:, j] > 0, 1.0, -1.0)
            srand(0)  # the same shuffles for a column whichever worker fits it, and whatever came before
            model = toPyModel(liblinear.train(prob, param))
            w = np.ctypeslib.as_array(model.w, (d + 1,))
            sign = 1.0 if model.label[0] == 1 else -1.0  # liblinear's w scores its first label seen
            fixed = sign * w[:d], sign * float(w[d])
        weights[j], intercepts[j] = fixed
    return weights, intercepts


def fit_svms(x, y: np.ndarray, c: float = 1.0, n_jobs: int = 1, use_liblinear: bool | None = None,
             tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """One linear SVM per column of the multi-hot `y` on the sparse `x`: weights [n_columns, n_features]
    and intercepts [n_columns], the columns split over `n_jobs` processes. `use_liblinear`: None picks
    the shared-problem path where it is installed."""
    from joblib import Parallel, delayed

    use_liblinear = have_liblinear() if use_liblinear is None else use_liblinear
    fit = _fit_liblinear if use_liblinear else _fit_sklearn
    x = x.astype(np.float64)  # liblinear's type: converted once here
    x.sort_indices()
    weights, intercepts = np.zeros((y.shape[1], x.shape[1]), np.float32), np.zeros(y.shape[1], np.float32)
    parts = [np.arange(k, y.shape[1], n_jobs) for k in range(min(n_jobs, y.shape[1]))]  # interleaved: balanced
    fitted = Parallel(n_jobs=len(parts))(delayed(fit)(x, y[:, cols], c, tol) for cols in parts) if parts else []
    for cols, (w, b) in zip(parts, fitted):
        weights[cols], intercepts[cols] = w, b
    return weights, intercepts
