#include "core/quant/methods/arb/arb.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace pbllm {
namespace {

double sign_of(double v) { return v >= 0.0 ? 1.0 : -1.0; }

} // namespace

void nearest_levels(double x, const OrderTwoFit& f, double& b1, double& b2)
{
    double best = INFINITY;
    for (double s1 : {1.0, -1.0})
        for (double s2 : {1.0, -1.0}) {
            const double e = std::fabs(x - (f.mu + f.alpha1 * s1 + f.alpha2 * s2));
            if (e < best) {
                best = e;
                b1 = s1;
                b2 = s2;
            }
        }
}


double order1_error(const std::vector<float>& x, const OrderOneFit& f)
{
    double e = 0.0;
    for (float v : x) {
        const double r = v - (f.mu + std::fabs(f.alpha) * sign_of(v - f.mu));
        e += r * r;
    }
    return e;
}

double order2_error(const std::vector<float>& x, const OrderTwoFit& f)
{
    double e = 0.0;
    for (float v : x) {
        double b1 = 1.0, b2 = 1.0;
        nearest_levels(v, f, b1, b2);
        const double r = v - (f.mu + f.alpha1 * b1 + f.alpha2 * b2);
        e += r * r;
    }
    return e;
}

OrderOneFit arb_refine_order1(const std::vector<float>& x, OrderOneFit f, int iterations, std::vector<double>* errors)
{
    if (x.empty())
        return f;
    const double n = static_cast<double>(x.size());
    std::vector<double> b(x.size());
    f.alpha = std::fabs(f.alpha);
    for (std::size_t i = 0; i < x.size(); ++i)
        b[i] = sign_of(x[i] - f.mu);
    if (errors)
        errors->assign(1, order1_error(x, f));
    for (int t = 0; t < iterations; ++t) {
        double mu = 0.0; // the best mean given alpha and B
        for (std::size_t i = 0; i < x.size(); ++i)
            mu += x[i] - f.alpha * b[i];
        f.mu = mu / n;
        double alpha = 0.0; // the best scale given mu and B (B^2 = 1)
        for (std::size_t i = 0; i < x.size(); ++i)
            alpha += b[i] * (x[i] - f.mu);
        f.alpha = alpha / n;
        if (f.alpha < 0.0) { // -alpha with -B: the same values, and sign(x - mu) stays the best B
            f.alpha = -f.alpha;
            for (double& v : b) v = -v;
        }
        for (std::size_t i = 0; i < x.size(); ++i) // the best signs given mu and alpha >= 0
            b[i] = sign_of(x[i] - f.mu);
        if (errors)
            errors->push_back(order1_error(x, f));
    }
    return f;
}

OrderTwoFit arb_refine_order2(const std::vector<float>& x, OrderTwoFit f, int iterations, std::vector<double>* errors)
{
    if (x.empty())
        return f;
    const double n = static_cast<double>(x.size());
    std::vector<double> b1(x.size(), 1.0), b2(x.size(), 1.0);
    for (std::size_t i = 0; i < x.size(); ++i)
        nearest_levels(x[i], f, b1[i], b2[i]);
    if (errors)
        errors->assign(1, order2_error(x, f));
    for (int t = 0; t < iterations; ++t) {
        double mu = 0.0, a1 = 0.0, a2 = 0.0;
        for (std::size_t i = 0; i < x.size(); ++i)
            mu += x[i] - f.alpha1 * b1[i] - f.alpha2 * b2[i];
        f.mu = mu / n;
        for (std::size_t i = 0; i < x.size(); ++i)
            a1 += b1[i] * (x[i] - f.mu - f.alpha2 * b2[i]);
        f.alpha1 = a1 / n;
        for (std::size_t i = 0; i < x.size(); ++i)
            a2 += b2[i] * (x[i] - f.mu - f.alpha1 * b1[i]);
        f.alpha2 = a2 / n;
        for (std::size_t i = 0; i < x.size(); ++i) // the nearest of the four levels
            nearest_levels(x[i], f, b1[i], b2[i]);
        if (errors)
            errors->push_back(order2_error(x, f));
    }
    // The levels mu +- a1 +- a2 do not change when a scale and its signs flip together.
    f.alpha1 = std::fabs(f.alpha1);
    f.alpha2 = std::fabs(f.alpha2);
    return f;
}

// ---- ARB-X: the same coordinates in the metric of the block's Hessian ---------------------------

namespace {

/// The quadratic forms ARB-X's updates need, over the group's positions: u^T S v for u, v among
/// the values x, the all-ones vector m and the signs b1, b2.
struct MetricForms {
    double xSm = 0, xS1 = 0, xS2 = 0, mSm = 0, mS1 = 0, mS2 = 0, s1S1 = 0, s1S2 = 0, s2S2 = 0;
    double trace = 0; ///< sum of S_ii over the positions: the scale below which a denominator is noise
};

MetricForms metric_forms(const std::vector<float>& x, const std::vector<double>& b1, const std::vector<double>& b2,
                         const double* S, std::int64_t n, const std::vector<std::int64_t>& P)
{
    MetricForms f;
    const bool two = !b2.empty();
    for (std::size_t i = 0; i < P.size(); ++i) {
        const double* row = S + P[i] * n;
        f.trace += row[P[i]];
        double sm = 0, s1 = 0, s2 = 0; // (S m)_i, (S b1)_i, (S b2)_i
        for (std::size_t j = 0; j < P.size(); ++j) {
            const double v = row[P[j]];
            sm += v;
            s1 += v * b1[j];
            if (two)
                s2 += v * b2[j];
        }
        f.xSm += x[i] * sm;
        f.xS1 += x[i] * s1;
        f.mSm += sm;
        f.mS1 += s1;
        f.s1S1 += b1[i] * s1;
        if (two) {
            f.xS2 += x[i] * s2;
            f.mS2 += s2;
            f.s1S2 += b1[i] * s2;
            f.s2S2 += b2[i] * s2;
        }
    }
    return f;
}

/// num / den, or `keep` where S leaves the coordinate undetermined: a denominator below 1e-9 of
/// S's trace over the group is rounding noise of nearly dependent inputs, not information.
double solved(double num, double den, double keep, const MetricForms& q)
{
    return den > 1e-9 * q.trace && den > 1e-300 ? num / den : keep;
}

} // namespace

double metric_error(const std::vector<float>& x, const std::vector<double>& b1, const std::vector<double>& b2,
                    const double* S, std::int64_t n, const std::vector<std::int64_t>& P, double mu, double alpha1,
                    double alpha2)
{
    std::vector<double> r(P.size());
    for (std::size_t i = 0; i < P.size(); ++i)
        r[i] = x[i] - mu - alpha1 * b1[i] - (b2.empty() ? 0.0 : alpha2 * b2[i]);
    double e = 0.0;
    for (std::size_t i = 0; i < P.size(); ++i)
        for (std::size_t j = 0; j < P.size(); ++j)
            e += r[i] * S[P[i] * n + P[j]] * r[j];
    return e;
}

OrderOneFit arbx_refine_order1(const std::vector<float>& x, const std::vector<double>& b1, const double* S,
                               std::int64_t n, const std::vector<std::int64_t>& P, OrderOneFit f, int iterations,
                               std::vector<double>* errors)
{
    static const std::vector<double> none;
    const MetricForms q = metric_forms(x, b1, none, S, n, P);
    if (errors)
        errors->assign(1, metric_error(x, b1, none, S, n, P, f.mu, f.alpha, 0.0));
    for (int t = 0; t < iterations; ++t) {
        f.mu = solved(q.xSm - f.alpha * q.mS1, q.mSm, f.mu, q);
        f.alpha = solved(q.xS1 - f.mu * q.mS1, q.s1S1, f.alpha, q);
        if (errors)
            errors->push_back(metric_error(x, b1, none, S, n, P, f.mu, f.alpha, 0.0));
    }
    return f;
}

OrderTwoFit arbx_refine_order2(const std::vector<float>& x, const std::vector<double>& b1, const std::vector<double>& b2,
                               const double* S, std::int64_t n, const std::vector<std::int64_t>& P, OrderTwoFit f,
                               int iterations, std::vector<double>* errors)
{
    const MetricForms q = metric_forms(x, b1, b2, S, n, P);
    if (errors)
        errors->assign(1, metric_error(x, b1, b2, S, n, P, f.mu, f.alpha1, f.alpha2));
    for (int t = 0; t < iterations; ++t) {
        f.mu = solved(q.xSm - f.alpha1 * q.mS1 - f.alpha2 * q.mS2, q.mSm, f.mu, q);
        f.alpha1 = solved(q.xS1 - f.mu * q.mS1 - f.alpha2 * q.s1S2, q.s1S1, f.alpha1, q);
        f.alpha2 = solved(q.xS2 - f.mu * q.mS2 - f.alpha1 * q.s1S2, q.s2S2, f.alpha2, q);
        if (errors)
            errors->push_back(metric_error(x, b1, b2, S, n, P, f.mu, f.alpha1, f.alpha2));
    }
    return f;
}

// ---- ARB-RC: a row scale and a column scale per order ------------------------------------------

double RowColumnFit::value(std::int64_t i, std::int64_t j) const
{
    const std::size_t e = static_cast<std::size_t>(i * cols + j);
    double v = a[static_cast<std::size_t>(i * order)] * c[static_cast<std::size_t>(j * order)] * b1[e];
    if (order == 2)
        v += a[static_cast<std::size_t>(i * order + 1)] * c[static_cast<std::size_t>(j * order + 1)] * b2[e];
    return v;
}

double rc_error(const float* W, const bool* mask, const RowColumnFit& f)
{
    double e = 0.0;
    for (std::int64_t i = 0; i < f.rows; ++i)
        for (std::int64_t j = 0; j < f.cols; ++j)
            if (mask[i * f.cols + j]) {
                const double r = W[i * f.cols + j] - f.value(i, j);
                e += r * r;
            }
    return e;
}

namespace {

/// Order k's least-squares row scales given its column scales and signs, against the target
/// W minus the other order (`other` < 0: none); then its column scales given those rows.
void refit_scales(const float* W, const bool* mask, RowColumnFit& f, int k, int other)
{
    const std::int64_t R = f.rows, C = f.cols, o = f.order;
    auto target = [&](std::int64_t i, std::int64_t j) {
        const std::size_t e = static_cast<std::size_t>(i * C + j);
        double t = W[e];
        if (other >= 0)
            t -= f.a[static_cast<std::size_t>(i * o + other)] * f.c[static_cast<std::size_t>(j * o + other)] *
                 (other == 0 ? f.b1[e] : f.b2[e]);
        return t;
    };
    auto sign = [&](std::int64_t i, std::int64_t j) {
        const std::size_t e = static_cast<std::size_t>(i * C + j);
        return static_cast<double>(k == 0 ? f.b1[e] : f.b2[e]);
    };
    // Rows, then columns, each in parallel (the rows' scales are all known before the columns').
    at::parallel_for(0, R, 64, [&](std::int64_t r0, std::int64_t r1) {
        for (std::int64_t i = r0; i < r1; ++i) {
            double num = 0.0, den = 0.0;
            for (std::int64_t j = 0; j < C; ++j)
                if (mask[i * C + j]) {
                    const double cj = f.c[static_cast<std::size_t>(j * o + k)];
                    num += cj * sign(i, j) * target(i, j);
                    den += cj * cj;
                }
            f.a[static_cast<std::size_t>(i * o + k)] = den > 0.0 ? num / den : 0.0;
        }
    });
    // Column sums in fixed chunks of rows, each row-major, added in chunk order: the same
    // result on any number of threads, and no strided walk down the columns.
    constexpr std::int64_t kChunk = 64;
    const std::int64_t chunks = (R + kChunk - 1) / kChunk;
    std::vector<double> num(static_cast<std::size_t>(chunks * C), 0.0), den(static_cast<std::size_t>(chunks * C), 0.0);
    at::parallel_for(0, chunks, 1, [&](std::int64_t q0, std::int64_t q1) {
        for (std::int64_t q = q0; q < q1; ++q) {
            double* n = num.data() + q * C;
            double* d = den.data() + q * C;
            for (std::int64_t i = q * kChunk; i < std::min(R, (q + 1) * kChunk); ++i) {
                const double ai = f.a[static_cast<std::size_t>(i * o + k)];
                for (std::int64_t j = 0; j < C; ++j)
                    if (mask[i * C + j]) {
                        n[j] += ai * sign(i, j) * target(i, j);
                        d[j] += ai * ai;
                    }
            }
        }
    });
    for (std::int64_t j = 0; j < C; ++j) {
        double n = 0.0, d = 0.0;
        for (std::int64_t q = 0; q < chunks; ++q) {
            n += num[static_cast<std::size_t>(q * C + j)];
            d += den[static_cast<std::size_t>(q * C + j)];
        }
        f.c[static_cast<std::size_t>(j * o + k)] = d > 0.0 ? n / d : 0.0;
    }
}

} // namespace

RowColumnFit arb_rc_fit(const float* W, const bool* mask, std::int64_t rows, std::int64_t cols, int order,
                        int iterations, std::vector<double>* errors)
{
    RowColumnFit f;
    f.order = order;
    f.rows = rows;
    f.cols = cols;
    const std::size_t n = static_cast<std::size_t>(rows * cols);
    f.a.assign(static_cast<std::size_t>(rows * order), 0.0);
    f.c.assign(static_cast<std::size_t>(cols * order), 0.0);
    f.b1.assign(n, 0);
    f.b2.assign(order == 2 ? n : 0, 0);
    // The start: each order fits the residual of the ones before it.
    std::vector<double> residual(n, 0.0);
    for (std::size_t e = 0; e < n; ++e)
        residual[e] = mask[e] ? W[e] : 0.0;
    for (int k = 0; k < order; ++k) {
        std::vector<signed char>& b = k == 0 ? f.b1 : f.b2;
        for (std::int64_t i = 0; i < rows; ++i) {
            double s = 0.0, m = 0.0;
            for (std::int64_t j = 0; j < cols; ++j)
                if (mask[i * cols + j]) {
                    s += std::fabs(residual[static_cast<std::size_t>(i * cols + j)]);
                    m += 1.0;
                }
            f.a[static_cast<std::size_t>(i * order + k)] = m > 0.0 ? s / m : 0.0;
        }
        std::vector<double> sum(static_cast<std::size_t>(cols), 0.0), count(static_cast<std::size_t>(cols), 0.0);
        for (std::int64_t i = 0; i < rows; ++i) { // row-major: the columns' sums side by side
            const double ai = f.a[static_cast<std::size_t>(i * order + k)];
            if (!(ai > 0.0))
                continue; // 0/0 is skipped, as a NaN-ignoring mean would
            for (std::int64_t j = 0; j < cols; ++j)
                if (mask[i * cols + j]) {
                    sum[static_cast<std::size_t>(j)] += std::fabs(residual[static_cast<std::size_t>(i * cols + j)] / ai);
                    count[static_cast<std::size_t>(j)] += 1.0;
                }
        }
        for (std::int64_t j = 0; j < cols; ++j)
            f.c[static_cast<std::size_t>(j * order + k)] =
                count[static_cast<std::size_t>(j)] > 0.0 ? sum[static_cast<std::size_t>(j)] / count[static_cast<std::size_t>(j)] : 0.0;
        for (std::int64_t i = 0; i < rows; ++i)
            for (std::int64_t j = 0; j < cols; ++j) {
                const std::size_t e = static_cast<std::size_t>(i * cols + j);
                if (!mask[e])
                    continue;
                b[e] = residual[e] >= 0.0 ? 1 : -1;
                residual[e] -= f.a[static_cast<std::size_t>(i * order + k)] * f.c[static_cast<std::size_t>(j * order + k)] * b[e];
            }
    }
    if (errors)
        errors->assign(1, rc_error(W, mask, f));
    for (int t = 0; t < iterations; ++t) {
        if (order == 1) {
            refit_scales(W, mask, f, 0, -1);
        } else {
            refit_scales(W, mask, f, 0, 1);
            refit_scales(W, mask, f, 1, 0);
            // The nearest of the four levels +-a1 c1 +-a2 c2 (ties: the first of ++, +-, -+, --).
            at::parallel_for(0, rows, 64, [&](std::int64_t r0, std::int64_t r1) {
                for (std::int64_t i = r0; i < r1; ++i)
                    for (std::int64_t j = 0; j < cols; ++j) {
                        const std::size_t e = static_cast<std::size_t>(i * cols + j);
                        if (!mask[e])
                            continue;
                        const double x = f.a[static_cast<std::size_t>(i * 2)] * f.c[static_cast<std::size_t>(j * 2)];
                        const double y = f.a[static_cast<std::size_t>(i * 2 + 1)] * f.c[static_cast<std::size_t>(j * 2 + 1)];
                        double best = INFINITY;
                        for (signed char s1 : {1, -1})
                            for (signed char s2 : {1, -1}) {
                                const double d = std::fabs(W[e] - (s1 * x + s2 * y));
                                if (d < best) {
                                    best = d;
                                    f.b1[e] = s1;
                                    f.b2[e] = s2;
                                }
                            }
                    }
            });
        }
        if (errors)
            errors->push_back(rc_error(W, mask, f));
    }
    return f;
}

} // namespace pbllm
