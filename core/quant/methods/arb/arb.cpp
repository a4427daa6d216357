#include "core/quant/methods/arb/arb.h"

#include <cmath>
#include <cstdint>

namespace pbllm {
namespace {

double sign_of(double v) { return v >= 0.0 ? 1.0 : -1.0; }

/// The nearest of mu +- a1 +- a2 to x: (B1, B2) in {-1, +1}^2 (ties: the first in the order
/// ++, +-, -+, --).
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

} // namespace

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

} // namespace pbllm
