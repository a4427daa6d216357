#pragma once
#include <QString>

class QElapsedTimer;

namespace pbllm {
class MainWindow;
/// pbllm-studio --bench: time to open (process start -> model loaded and first tuning chart),
/// slider-to-updated-chart latency (median and max of 21 moves 100 ms apart, Hessian metric after a small
/// calibration), and peak memory while comparing the full and the compressed model. `shape` is
/// "stories260K" or "synthetic-110M" (stories110M's Linears, random weights, tok512's vocabulary),
/// or a model folder: then the big-model figures (Model page, one Linear's distributions, sampled
/// slider previews, the exact pass after release, memory).
int run_studio_bench(MainWindow& window, const QString& shape, const QElapsedTimer& since_start);
} // namespace pbllm
