#include "core/calibration_file.h"

#include "core/error.h"
#include "core/hdf5_io.h"
#include "core/system.h"

#include <ATen/ATen.h>
#include <QFileInfo>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace pbllm {
namespace {

constexpr const char* kFormat = "pbllm-calibration";

std::string layer_group(int i) { return "layer." + std::to_string(i); }

/// The root attributes and the windows; `version` 1 stores float64 Hessians, 2 float32.
void write_header(const Writer& w, hid_t file, const CalibrationData& data, const ModelConfig& config,
                  std::int64_t version)
{
    w.attr(file, "format", std::string(kFormat));
    w.attr(file, "format_version", version);
    w.attr(file, "seed", static_cast<std::int64_t>(data.seed));
    w.attr(file, "seqlen", static_cast<std::int64_t>(data.seqlen));
    w.attr(file, "text_sha256", data.text_sha256);
    w.attr(file, "model_sha256", data.model_sha256);
    w.attr(file, "n_layers", static_cast<std::int64_t>(config.n_layers));
    std::vector<std::int32_t> flat;
    for (const auto& win : data.windows)
        flat.insert(flat.end(), win.begin(), win.end());
    w.dataset(file, "windows", H5T_STD_I32LE, H5T_NATIVE_INT32, {data.windows.size(), static_cast<hsize_t>(data.seqlen)},
              flat.data());
}

/// One layer's four Hessians into group hessians/layer.<l>, float64 or float32.
void write_layer_hessians(const Writer& w, hid_t hessians, int l, const LayerHessians& h, bool float32)
{
    const Hid g = w.group(hessians, layer_group(l));
    for (int i = 0; i < kLinearInputCount; ++i) {
        const std::string name(to_string(static_cast<LinearInput>(i)));
        const at::Tensor t = h[static_cast<std::size_t>(i)].to(float32 ? at::kFloat : at::kDouble).contiguous();
        const std::vector<hsize_t> dims = {static_cast<hsize_t>(t.size(0)), static_cast<hsize_t>(t.size(1))};
        if (float32)
            w.dataset(g.get(), name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, dims, t.data_ptr<float>());
        else
            w.dataset(g.get(), name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, dims, t.data_ptr<double>());
        const Hid ds(H5Dopen2(g.get(), name.c_str(), H5P_DEFAULT), H5Dclose);
        w.attr(ds.get(), "trace", h[static_cast<std::size_t>(i)].to(at::kDouble).trace().item<double>());
    }
}

} // namespace

void write_calibration_file(const CalibrationData& data, const ModelConfig& config, const std::string& path)
{
    if (data.hessians.empty() && !data.hessian_file.empty()) {
        // Hessians left on disk (a big model's): the file they are in is the calibration.
        copy_file_atomically(data.hessian_file, path);
        return;
    }
    quiet_hdf5();
    const Hid file = create_memory_hdf5_file(path);
    const Writer w(path);
    write_header(w, file.get(), data, config, 1);
    const Hid hessians = w.group(file.get(), "hessians");
    for (std::size_t l = 0; l < data.hessians.size(); ++l)
        write_layer_hessians(w, hessians.get(), static_cast<int>(l), data.hessians[l], /*float32=*/false);
    save_hdf5_image(file.get(), path);
}

void calibrate_to_file(const Model& model, const CalibrationData& data, const std::string& path,
                       const ProgressFn& progress)
{
    const ModelConfig& c = model.config;
    if (data.windows.empty())
        throw Error("calibration needs at least one window");
    const std::int64_t n = static_cast<std::int64_t>(data.windows.size());
    const std::int64_t widest = std::max({c.dim, c.hidden_dim, c.q_dim()}); // the largest Linear input
    const std::int64_t hidden_square = widest * widest;
    // Besides the pass itself: the largest Hessian's float32 copy while it is written.
    require_memory(calibration_working_bytes(model, n, data.seqlen) + hidden_square * 4,
                   "calibrating " + model.source_path + " into " + path + " (one layer at a time: " + std::to_string(n) +
                       " x " + std::to_string(data.seqlen) + " calibration tokens twice in float32, one decoder layer "
                       "in float32 with its Hessians; fewer or shorter windows need less)");
    const std::string folder = QFileInfo(QString::fromStdString(path)).absolutePath().toStdString();
    require_disk_space(folder, c.n_layers * layer_hessian_bytes(c) / 2 + n * data.seqlen * 4,
                       path + ": the calibration file (float32 Hessians, " + human_bytes(layer_hessian_bytes(c) / 2) +
                           " a layer)");
    StagedHdf5File file(path);
    const Writer w(path);
    write_header(w, file.get(), data, c, 2);
    const Hid hessians = w.group(file.get(), "hessians");
    for_each_layer_hessians(
        model, data.windows,
        [&](int l, LayerHessians&& h) { write_layer_hessians(w, hessians.get(), l, h, /*float32=*/true); }, progress);
    file.commit();
}

namespace {

/// The Hessian dataset `name` of group `g` as float64 (stored float32 or float64), checked to be
/// (d, d) and finite.
at::Tensor read_hessian(const Reader& r, hid_t g, const std::string& where, const std::string& name, hsize_t d)
{
    const std::vector<hsize_t> want = {d, d};
    std::size_t element = 8;
    if (r.exists(g, name)) {
        const Hid ds(H5Dopen2(g, name.c_str(), H5P_DEFAULT), H5Dclose);
        const Hid type(ds.ok() ? H5Dget_type(ds.get()) : -1, H5Tclose);
        if (type.ok() && H5Tget_class(type.get()) == H5T_FLOAT && H5Tget_size(type.get()) == 4)
            element = 4;
    }
    const std::vector<std::uint8_t> bytes =
        r.read_raw(g, name, element == 4 ? H5T_NATIVE_FLOAT : H5T_NATIVE_DOUBLE, element, &want);
    at::Tensor t = at::empty({static_cast<std::int64_t>(d), static_cast<std::int64_t>(d)},
                             element == 4 ? at::kFloat : at::kDouble);
    std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
    if (!at::isfinite(t).all().item<bool>())
        r.fail("Hessian " + where + "/" + name + " contains NaN/Inf");
    return t.to(at::kDouble);
}

/// Each Hessian dataset exists with shape (d, d) and a 4- or 8-byte float type; nothing is read.
void check_hessian_layout(const Reader& r, hid_t g, const std::string& where, const std::string& name, hsize_t d)
{
    if (!r.exists(g, name))
        r.fail("dataset '" + where + "/" + name + "' is missing");
    const Hid ds(H5Dopen2(g, name.c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.ok())
        r.fail("cannot open dataset '" + where + "/" + name + "'");
    if (r.dims(ds.get(), name) != std::vector<hsize_t>{d, d})
        r.fail("dataset '" + where + "/" + name + "' is not " + std::to_string(d) + " x " + std::to_string(d));
    const Hid type(H5Dget_type(ds.get()), H5Tclose);
    if (!type.ok() || H5Tget_class(type.get()) != H5T_FLOAT ||
        (H5Tget_size(type.get()) != 4 && H5Tget_size(type.get()) != 8))
        r.fail("dataset '" + where + "/" + name + "' has an unexpected element type");
}

/// The "trace" attribute of a Hessian dataset; NaN when absent (files before it was stored).
double stored_trace(const Reader& r, hid_t g, const std::string& name)
{
    const Hid ds(H5Dopen2(g, name.c_str(), H5P_DEFAULT), H5Dclose);
    if (!ds.ok() || H5Aexists(ds.get(), "trace") <= 0)
        return std::nan("");
    return r.attr_double(ds.get(), "trace");
}


CalibrationData read_calibration_file_unchecked(const std::string& path, const ModelConfig& config,
                                                HessianLoading hessians_mode)
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
    if (hessians_mode == HessianLoading::None)
        return data;
    const Hid hessians = r.group(file.get(), "hessians");
    for (int l = 0; l < config.n_layers; ++l) {
        const Hid g = r.group(hessians.get(), layer_group(l));
        LayerHessians h;
        std::array<double, kLinearInputCount> traces{};
        for (int i = 0; i < kLinearInputCount; ++i) {
            const LinearInput input = static_cast<LinearInput>(i);
            const std::string name(to_string(input));
            const auto k = static_cast<std::size_t>(i);
            if (hessians_mode == HessianLoading::OnDemand) {
                check_hessian_layout(r, g.get(), layer_group(l), name, static_cast<hsize_t>(input_features(input, config)));
                traces[k] = stored_trace(r, g.get(), name);
            } else {
                h[k] = read_hessian(r, g.get(), layer_group(l), name, static_cast<hsize_t>(input_features(input, config)));
                traces[k] = stored_trace(r, g.get(), name);
                if (std::isnan(traces[k]))
                    traces[k] = h[k].trace().item<double>();
            }
        }
        data.hessian_traces.push_back(traces);
        if (hessians_mode == HessianLoading::All)
            data.hessians.push_back(std::move(h));
    }
    if (hessians_mode == HessianLoading::OnDemand)
        data.hessian_file = path;
    return data;
}

at::Tensor read_one_hessian_unchecked(const std::string& path, int layer, LinearInput input)
{
    quiet_hdf5();
    const Hid file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    if (!file.ok())
        throw Error(path + ": cannot open as an HDF5 file (missing, truncated or not HDF5)");
    const Reader r(path);
    const Hid hessians = r.group(file.get(), "hessians");
    const Hid g = r.group(hessians.get(), layer_group(layer));
    const std::string name(to_string(input));
    std::vector<hsize_t> shape;
    {
        if (!r.exists(g.get(), name))
            r.fail("dataset '" + layer_group(layer) + "/" + name + "' is missing");
        const Hid ds(H5Dopen2(g.get(), name.c_str(), H5P_DEFAULT), H5Dclose);
        if (!ds.ok())
            r.fail("cannot open dataset '" + layer_group(layer) + "/" + name + "'");
        shape = r.dims(ds.get(), name);
    }
    if (shape.size() != 2 || shape[0] != shape[1] || shape[0] == 0)
        r.fail("dataset '" + layer_group(layer) + "/" + name + "' is not a square matrix");
    return read_hessian(r, g.get(), layer_group(layer), name, shape[0]);
}

} // namespace

CalibrationData read_calibration_file(const std::string& path, const ModelConfig& config, HessianLoading hessians)
{
    // First in a child process: a file that crashes the HDF5 library must not crash this one.
    check_hdf5_structure(path, [&] {
        (void)read_calibration_file_unchecked(path, config, hessians);
    });
    return read_calibration_file_unchecked(path, config, hessians);
}

at::Tensor calibration_hessian(const CalibrationData& data, int layer, LinearInput input)
{
    if (!data.hessians.empty()) {
        if (layer < 0 || layer >= static_cast<int>(data.hessians.size()))
            throw Error("calibration has no layer " + std::to_string(layer));
        return data.hessians[static_cast<std::size_t>(layer)][static_cast<std::size_t>(input)];
    }
    if (data.hessian_file.empty())
        throw Error("the calibration was read without its Hessians");
    // Checked in a child first like every read (the file may have changed since it was opened).
    check_hdf5_structure(data.hessian_file, [&] { (void)read_one_hessian_unchecked(data.hessian_file, layer, input); });
    return read_one_hessian_unchecked(data.hessian_file, layer, input);
}

} // namespace pbllm
