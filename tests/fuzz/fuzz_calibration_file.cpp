// Calibration HDF5 files (for the tiny seed model's shape), read whole or one Hessian at a time:
// read or refused with pbllm::Error.
#include "core/calibration_file.h"
#include "core/error.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string path = pbllm::fuzz::scratch_file(data, size, ".calib.h5");
    const pbllm::ModelConfig config = pbllm::fuzz::tiny_config();
    try {
        pbllm::read_calibration_file(path, config);
    } catch (const pbllm::Error&) {
    }
    // Left on disk and read one Hessian at a time (pbllm saliency on a big model).
    try {
        const pbllm::CalibrationData lazy = pbllm::read_calibration_file(path, config, pbllm::HessianLoading::OnDemand);
        for (int l = 0; l < config.n_layers; ++l)
            for (int i = 0; i < pbllm::kLinearInputCount; ++i) {
                try {
                    (void)pbllm::calibration_hessian(lazy, l, static_cast<pbllm::LinearInput>(i));
                } catch (const pbllm::Error&) {
                }
            }
    } catch (const pbllm::Error&) {
    }
    return 0;
}
