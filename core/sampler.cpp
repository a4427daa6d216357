#include "core/sampler.h"

#include "core/error.h"

#include <algorithm>
#include <cmath>

namespace pbllm {

void SamplerSettings::validate() const
{
    if (!(temperature >= 0.0f) || !std::isfinite(temperature))
        throw Error("temperature must be a finite number >= 0 (got " + std::to_string(temperature) + ")");
    if (top_k < 0)
        throw Error("top-k must be >= 0 (got " + std::to_string(top_k) + ")");
    if (!(top_p > 0.0f && top_p <= 1.0f))
        throw Error("top-p must be in (0, 1] (got " + std::to_string(top_p) + ")");
}

Sampler::Sampler(const SamplerSettings& settings) : settings_(settings), rng_(settings.seed)
{
    settings_.validate();
}

double Sampler::uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

int Sampler::sample(const float* logits, int n)
{
    if (settings_.temperature == 0.0f)
        return static_cast<int>(std::max_element(logits, logits + n) - logits);

    candidates_.resize(n);
    for (int i = 0; i < n; ++i)
        candidates_[i] = {logits[i] / settings_.temperature, i};
    auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
    int keep = n;
    if (settings_.top_k > 0 && settings_.top_k < n) {
        keep = settings_.top_k;
        std::partial_sort(candidates_.begin(), candidates_.begin() + keep, candidates_.end(), by_logit);
    } else if (settings_.top_p < 1.0f) {
        std::sort(candidates_.begin(), candidates_.end(), by_logit);
    }
    // Softmax over the kept candidates (max first when sorted; otherwise find it).
    float max_logit = -INFINITY;
    for (int i = 0; i < keep; ++i)
        max_logit = std::max(max_logit, candidates_[i].first);
    double total = 0.0;
    for (int i = 0; i < keep; ++i) {
        candidates_[i].first = std::exp(candidates_[i].first - max_logit);
        total += candidates_[i].first;
    }
    if (settings_.top_p < 1.0f) {
        double cumulative = 0.0;
        int cut = keep;
        for (int i = 0; i < keep; ++i) {
            cumulative += candidates_[i].first / total;
            if (cumulative >= settings_.top_p) {
                cut = i + 1;
                break;
            }
        }
        keep = cut;
        total = 0.0;
        for (int i = 0; i < keep; ++i)
            total += candidates_[i].first;
    }
    const double r = uniform() * total;
    double acc = 0.0;
    for (int i = 0; i < keep; ++i) {
        acc += candidates_[i].first;
        if (r < acc)
            return candidates_[i].second;
    }
    return candidates_[keep - 1].second;
}

} // namespace pbllm
