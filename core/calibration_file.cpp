#include "core/calibration_file.h"

#include "core/error.h"
#include "core/hdf5_io.h"

#include <ATen/ATen.h>

#include <cstring>

namespace pbllm {
namespace {

constexpr const char* kFormat = "pbllm-calibration";

std::string layer_group(int i) { return "layer." + std::to_string(i); }

} // namespace

void write_calibration_file(const CalibrationData& data, const ModelConfig& config, const std::string& path)
{
    quiet_hdf5();
    {
        const Hid file = create_memory_hdf5_file(path);
        const Writer w(path);
        w.attr(file.get(), "format", std::string(kFormat));
        w.attr(file.get(), "format_version", std::int64_t(1));
        w.attr(file.get(), "seed", static_cast<std::int64_t>(data.seed));
        w.attr(file.get(), "seqlen", static_cast<std::int64_t>(data.seqlen));
        w.attr(file.get(), "text_sha256", data.text_sha256);
        w.attr(file.get(), "model_sha256", data.model_sha256);
        w.attr(file.get(), "n_layers", static_cast<std::int64_t>(config.n_layers));
        std::vector<std::int32_t> flat;
        for (const auto& win : data.windows)
            flat.insert(flat.end(), win.begin(), win.end());
        w.dataset(file.get(), "windows", H5T_STD_I32LE, H5T_NATIVE_INT32,
                  {data.windows.size(), static_cast<hsize_t>(data.seqlen)}, flat.data());
        const Hid hessians = w.group(file.get(), "hessians");
        for (std::size_t l = 0; l < data.hessians.size(); ++l) {
            const Hid g = w.group(hessians.get(), layer_group(static_cast<int>(l)));
            for (int i = 0; i < kLinearInputCount; ++i) {
                const at::Tensor h = data.hessians[l][i].to(at::kDouble).contiguous();
                w.dataset(g.get(), std::string(to_string(static_cast<LinearInput>(i))), H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE,
                          {static_cast<hsize_t>(h.size(0)), static_cast<hsize_t>(h.size(1))}, h.data_ptr<double>());
            }
        }
        save_hdf5_image(file.get(), path);
    }
}

namespace {

CalibrationData read_calibration_file_unchecked(const std::string& path, const ModelConfig& config, bool hessians_too)
{
    quiet_hdf5();
    Hid file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    if (!file.ok())
        throw Error(path + ": cannot open as an HDF5 file (missing, truncated or not HDF5)");
    const Reader r(path);
    if (r.attr_string(file.get(), "format") != kFormat)
        r.fail("not a PB-LLM calibration file (format attribute is not '" + std::string(kFormat) + "')");
    CalibrationData data;
    data.seed = static_cast<std::uint64_t>(r.attr_int(file.get(), "seed"));
    data.seqlen = static_cast<int>(r.attr_int(file.get(), "seqlen"));
    data.text_sha256 = r.attr_string(file.get(), "text_sha256");
    data.model_sha256 = r.attr_string(file.get(), "model_sha256");
    const std::int64_t layers = r.attr_int(file.get(), "n_layers");
    if (layers != config.n_layers)
        r.fail("calibrated for a model with " + std::to_string(layers) + " layers, this model has " +
               std::to_string(config.n_layers));
    if (data.seqlen < 2 || data.seqlen > config.max_seq_len)
        r.fail("window length " + std::to_string(data.seqlen) + " does not fit the model's context of " +
               std::to_string(config.max_seq_len));
    std::vector<hsize_t> shape;
    const std::vector<std::uint8_t> raw = r.read_raw(file.get(), "windows", H5T_NATIVE_INT32, 4, nullptr, &shape);
    if (shape.size() != 2 || shape[1] != static_cast<hsize_t>(data.seqlen) || shape[0] == 0)
        r.fail("dataset 'windows' must be (nsamples, seqlen)");
    std::vector<std::int32_t> flat(raw.size() / 4);
    std::memcpy(flat.data(), raw.data(), raw.size());
    for (std::int32_t id : flat)
        if (id < 0 || id >= config.vocab_size)
            r.fail("dataset 'windows' holds token id " + std::to_string(id) + " outside the vocabulary of " +
                   std::to_string(config.vocab_size));
    for (hsize_t i = 0; i < shape[0]; ++i)
        data.windows.emplace_back(flat.begin() + static_cast<std::ptrdiff_t>(i * shape[1]),
                                  flat.begin() + static_cast<std::ptrdiff_t>((i + 1) * shape[1]));
    if (!hessians_too)
        return data;
    const Hid hessians = r.group(file.get(), "hessians");
    for (int l = 0; l < config.n_layers; ++l) {
        const Hid g = r.group(hessians.get(), layer_group(l));
        std::array<at::Tensor, kLinearInputCount> h;
        for (int i = 0; i < kLinearInputCount; ++i) {
            const hsize_t d = static_cast<LinearInput>(i) == LinearInput::MlpHidden ? config.hidden_dim : config.dim;
            const std::vector<hsize_t> want = {d, d};
            const std::string name(to_string(static_cast<LinearInput>(i)));
            const std::vector<std::uint8_t> bytes = r.read_raw(g.get(), name, H5T_NATIVE_DOUBLE, 8, &want);
            at::Tensor t = at::empty({static_cast<std::int64_t>(d), static_cast<std::int64_t>(d)}, at::kDouble);
            std::memcpy(t.data_ptr<double>(), bytes.data(), bytes.size());
            if (!at::isfinite(t).all().item<bool>())
                r.fail("Hessian " + layer_group(l) + "/" + name + " contains NaN/Inf");
            h[i] = t;
        }
        data.hessians.push_back(h);
    }
    return data;
}

} // namespace

CalibrationData read_calibration_file(const std::string& path, const ModelConfig& config, bool hessians)
{
    // First in a child process: a file that crashes the HDF5 library must not crash this one.
    check_hdf5_structure(path, [&] {
        (void)read_calibration_file_unchecked(path, config, hessians);
    });
    return read_calibration_file_unchecked(path, config, hessians);
}

} // namespace pbllm
