// Timing helpers shared by the benchmark suites.
#include "app/cli/bench_util.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>

namespace pbllm::cli {

double seconds_of(const std::function<void()>& work)
{
    const auto t0 = std::chrono::steady_clock::now();
    work();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v)
{
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// Median over `runs` of `rate_of_one_run()` after one warm-up run.
double median_rate(int runs, const std::function<double()>& rate_of_one_run)
{
    rate_of_one_run();
    std::vector<double> rates;
    for (int i = 0; i < runs; ++i)
        rates.push_back(rate_of_one_run());
    return median(rates);
}

Baselines measure_baselines(int runs)
{
    Baselines b;
    const at::Tensor a = at::randn({2048, 2048}), c = at::randn({2048, 2048});
    b.matmul_gflops = median_rate(runs, [&] {
        const double s = seconds_of([&] { at::mm(a, c); });
        return 2.0 * 2048.0 * 2048.0 * 2048.0 / s / 1e9;
    });
    // Streaming read of 512 MiB (libtorch's parallel, vectorised sum): what a matvec can hope for.
    const at::Tensor big = at::ones({128ll << 20});
    b.memory_gbps = median_rate(runs, [&] {
        const double s = seconds_of([&] { big.sum().item<float>(); });
        return static_cast<double>(big.numel()) * 4.0 / s / 1e9;
    });
    return b;
}

} // namespace pbllm::cli
