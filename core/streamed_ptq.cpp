#include "core/streamed_ptq.h"

#include "core/error.h"
#include "core/hdf5_io.h"
#include "core/packed_hdf5.h"
#include "core/ptq.h"
#include "core/quant/registry.h"
#include "core/system.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <QDateTime>
#include <QDir>
#include <QFileInfo>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>
#include <set>

#ifndef PBLLM_VERSION
#define PBLLM_VERSION "unknown"
#endif

namespace pbllm {
namespace {

constexpr const char* kStateFormat = "pbllm-quantize-progress";
constexpr char kStreamMagic[8] = {'P', 'B', 'L', 'L', 'M', 'R', 'S', '1'};

std::string layer_file(const std::string& dir, int layer)
{
    char name[32];
    std::snprintf(name, sizeof name, "/layer-%04d.h5", layer);
    return dir + name;
}

std::string stream_file(const std::string& dir, int layer)
{
    char name[32];
    std::snprintf(name, sizeof name, "/stream-%04d.bin", layer);
    return dir + name;
}

std::string head_file(const std::string& dir) { return dir + "/head.h5"; }

// ---- state.json ------------------------------------------------------------------------------

struct RunState {
    std::string program_version, model, plan, calibration, created;
    int threads = 0; ///< a reduction split over another thread count rounds differently
    int layers_done = 0;
    bool head_done = false;
    std::vector<std::string> layer_sha256; ///< of each finished layer file (the head's last)
};

void write_state(const std::string& dir, const RunState& s)
{
    const QJsonObject o{{"format", kStateFormat},
                        {"program_version", QString::fromStdString(s.program_version)},
                        {"model_fingerprint", QString::fromStdString(s.model)},
                        {"plan", QString::fromStdString(s.plan)},
                        {"calibration_fingerprint", QString::fromStdString(s.calibration)},
                        {"created", QString::fromStdString(s.created)},
                        {"threads", s.threads},
                        {"layers_done", s.layers_done},
                        {"head_done", s.head_done},
                        {"layer_sha256", QJsonArray::fromStringList([&] {
                             QStringList l;
                             for (const std::string& h : s.layer_sha256)
                                 l << QString::fromStdString(h);
                             return l;
                         }())}};
    write_file_atomically(dir + "/state.json", QJsonDocument(o).toJson().toStdString());
}

RunState read_state(const std::string& dir)
{
    const std::string path = dir + "/state.json";
    if (!QFileInfo::exists(QString::fromStdString(path)))
        throw Error(path + ": missing; the folder is not an interrupted quantization (remove it, or start over with --force)");
    QJsonParseError err;
    const QJsonDocument doc = QJsonDocument::fromJson(QByteArray::fromStdString(read_file_bytes(path)), &err);
    const QJsonObject o = doc.object();
    if (doc.isNull() || o.value("format").toString() != kStateFormat)
        throw Error(path + ": not the state of an interrupted quantization (corrupt?)");
    RunState s;
    s.program_version = o.value("program_version").toString().toStdString();
    s.model = o.value("model_fingerprint").toString().toStdString();
    s.plan = o.value("plan").toString().toStdString();
    s.calibration = o.value("calibration_fingerprint").toString().toStdString();
    s.created = o.value("created").toString().toStdString();
    s.threads = o.value("threads").toInt(-1);
    s.layers_done = o.value("layers_done").toInt(-1);
    s.head_done = o.value("head_done").toBool();
    for (const QJsonValue& v : o.value("layer_sha256").toArray())
        s.layer_sha256.push_back(v.toString().toStdString());
    if (s.layers_done < 0 || static_cast<int>(s.layer_sha256.size()) != s.layers_done + (s.head_done ? 1 : 0))
        throw Error(path + ": its layer count and file checksums disagree (corrupt?); start over with --force");
    return s;
}

/// "config.layer.salient_ratio: 0.1 then, 0.2 now": the first difference of two JSON values.
std::string first_difference(const QJsonValue& a, const QJsonValue& b, const std::string& path)
{
    if (a.isObject() && b.isObject()) {
        const QJsonObject oa = a.toObject(), ob = b.toObject();
        QStringList keys = oa.keys() + ob.keys();
        keys.removeDuplicates();
        keys.sort();
        for (const QString& k : keys) {
            const std::string d =
                first_difference(oa.value(k), ob.value(k), path.empty() ? k.toStdString() : path + "." + k.toStdString());
            if (!d.empty())
                return d;
        }
        return {};
    }
    if (a == b)
        return {};
    auto text = [](const QJsonValue& v) {
        if (v.isUndefined())
            return std::string("absent");
        const QJsonDocument d = v.isObject() ? QJsonDocument(v.toObject()) : QJsonDocument(QJsonArray{v});
        std::string s = d.toJson(QJsonDocument::Compact).toStdString();
        return v.isObject() ? s : s.substr(1, s.size() - 2);
    };
    return (path.empty() ? std::string("plan") : path) + ": " + text(a) + " then, " + text(b) + " now";
}

void check_same_run(const std::string& dir, const RunState& then, const RunState& now)
{
    auto refuse = [&](const std::string& field, const std::string& detail) {
        throw Error(dir + ": cannot resume: the interrupted run had a different " + field + " (" + detail +
                    "); run without --resume and with --force to start over");
    };
    if (then.program_version != now.program_version)
        refuse("program version", then.program_version + " then, " + now.program_version + " now");
    if (then.model != now.model)
        refuse("model", "fingerprint " + then.model.substr(0, 12) + " then, " + now.model.substr(0, 12) + " now");
    if (then.plan != now.plan) {
        const QJsonDocument a = QJsonDocument::fromJson(QByteArray::fromStdString(then.plan));
        const QJsonDocument b = QJsonDocument::fromJson(QByteArray::fromStdString(now.plan));
        std::string d = first_difference(a.object(), b.object(), "");
        refuse("plan", d.empty() ? "its JSON differs" : d);
    }
    if (then.calibration != now.calibration)
        refuse("calibration", "the windows' token ids differ: another text, seed, window count or length");
    if (then.threads != now.threads)
        refuse("thread count", std::to_string(then.threads) + " then, " + std::to_string(now.threads) +
                                   " now; sums split over other threads round differently: use --threads " +
                                   std::to_string(then.threads));
}

/// An exclusive lock on OUT.partial: two runs writing one output would undo each other's state.
class FolderLock {
public:
    FolderLock() = default;
    FolderLock(const FolderLock&) = delete;
    FolderLock& operator=(const FolderLock&) = delete;
    ~FolderLock() { release(); }
    void take(const std::string& dir)
    {
        release();
        fd_ = ::open((dir + "/lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd_ < 0)
            throw Error(dir + ": cannot create its lock file: " + std::strerror(errno));
        if (::flock(fd_, LOCK_EX | LOCK_NB) != 0)
            throw Error(dir + ": another pbllm quantize is writing this output right now");
    }

private:
    void release()
    {
        if (fd_ >= 0)
            ::close(fd_);
        fd_ = -1;
    }
    int fd_ = -1;
};

/// Removes OUT.partial, state.json first: a removal cut short leaves no state that would claim
/// layer files already gone.
void remove_folder(const std::string& dir)
{
    std::remove((dir + "/state.json").c_str());
    QDir(QString::fromStdString(dir)).removeRecursively();
}

// ---- per-layer files -------------------------------------------------------------------------

/// A quantized Linear as a layer file keeps it: packed (about 1.3 bits a weight instead of the
/// QuantizedLinear's 8 bytes), with its report.
struct PackedWithReport {
    PackedLinear packed;
    LinearReport report;
};

/// The report's fields that follow from the packed Linear itself.
LinearReport report_of(const PackedLinear& p)
{
    LinearReport r;
    r.name = p.name;
    r.rows = p.rows;
    r.cols = p.cols;
    r.index_encoding = to_string(p.index.encoding);
    r.bits = linear_bits(p);
    return r;
}

PackedWithReport packed_with_report(const QuantizedLinear& q)
{
    PackedWithReport p{pack_linear(q), {}};
    LinearReport& r = p.report = report_of(p.packed);
    r.salient_ratio = q.salient_ratio;
    r.weight_error = q.weight_error;
    r.output_error = q.output_error;
    r.seconds = q.seconds;
    r.note = q.note;
    return p;
}

/// Writes the layer file and returns its SHA-256 (recorded in state.json, checked before use).
std::string write_linears_file(const std::string& path, const std::vector<PackedWithReport>& linears)
{
    StagedHdf5File file(path);
    const Writer w(path);
    for (const PackedWithReport& l : linears) {
        write_packed_linear(w, file.get(), l.packed);
        const Hid g(H5Gopen2(file.get(), l.report.name.c_str(), H5P_DEFAULT), H5Gclose);
        w.attr(g.get(), "report_salient_ratio", l.report.salient_ratio);
        w.attr(g.get(), "report_weight_error", l.report.weight_error);
        w.attr(g.get(), "report_output_error", l.report.output_error);
        w.attr(g.get(), "report_seconds", l.report.seconds);
        w.attr(g.get(), "report_note", l.report.note);
    }
    file.commit();
    return sha256_of_file(path);
}

/// Error unless the layer file exists with the checksum state.json recorded for it: a damaged
/// file is named before anything trusts (or HDF5 parses) it.
void verify_layer_file(const std::string& path, const std::string& sha256)
{
    if (!QFileInfo::exists(QString::fromStdString(path)))
        throw Error(path + ": missing; the interrupted run's folder is incomplete (start over with --force)");
    if (sha256_of_file(path) != sha256)
        throw Error(path + ": its checksum differs from the one recorded when it was written (damaged?); start over "
                           "with --force");
}

/// Reads the Linears `names` from a per-layer file and hands each to `fn` with its report.
void read_linears_file_unchecked(const std::string& path, const std::vector<std::string>& names,
                                 const std::function<void(PackedLinear&&, LinearReport&&)>& fn)
{
    quiet_hdf5();
    const Hid file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    if (!file.ok())
        throw Error(path + ": HDF5 cannot open the file (truncated or corrupt); start over with --force");
    const Reader r(path);
    for (const std::string& name : names) {
        const std::string what = path + ": Linear '" + name + "'";
        if (!r.exists(file.get(), name))
            r.fail("Linear '" + name + "' is missing");
        PackedLinear p = read_packed_linear(r, file.get(), name, what); // checked by pack_linear when written
        const Hid g = r.group(file.get(), name);
        LinearReport rep = report_of(p);
        rep.salient_ratio = r.attr_double(g.get(), "report_salient_ratio");
        rep.weight_error = r.attr_double(g.get(), "report_weight_error");
        rep.output_error = r.attr_double(g.get(), "report_output_error");
        rep.seconds = r.attr_double(g.get(), "report_seconds");
        rep.note = r.attr_string(g.get(), "report_note");
        fn(std::move(p), std::move(rep));
    }
}

/// read_linears_file_unchecked, first in a child process: the checksum in state.json guards
/// against damage, not against a state.json edited to match a crafted file, and such a file can
/// crash the HDF5 library itself (found by fuzz_resume).
void read_linears_file(const std::string& path, const std::vector<std::string>& names,
                       const std::function<void(PackedLinear&&, LinearReport&&)>& fn)
{
    check_hdf5_structure(path, [&] { read_linears_file_unchecked(path, names, [](PackedLinear&&, LinearReport&&) {}); });
    read_linears_file_unchecked(path, names, fn);
}

void write_stream(const std::string& path, int layer, const at::Tensor& x)
{
    const at::Tensor c = x.contiguous();
    const std::int64_t header[4] = {layer, c.size(0), c.size(1), c.size(2)};
    AtomicFileWriter out(path);
    out.write(kStreamMagic, sizeof kStreamMagic);
    out.write(header, sizeof header);
    out.write(c.data_ptr<float>(), static_cast<std::size_t>(c.numel()) * sizeof(float));
    out.commit();
}

at::Tensor read_stream(const std::string& path, int layer, std::int64_t n, std::int64_t seqlen, std::int64_t dim)
{
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw Error(path + ": missing; the interrupted run's folder is incomplete (start over with --force)");
    char magic[8];
    std::int64_t header[4];
    in.read(magic, sizeof magic);
    in.read(reinterpret_cast<char*>(header), sizeof header);
    if (!in || std::memcmp(magic, kStreamMagic, sizeof magic) != 0 || header[0] != layer || header[1] != n ||
        header[2] != seqlen || header[3] != dim)
        throw Error(path + ": not the residual stream entering layer " + std::to_string(layer) +
                    " of this run (corrupt?); start over with --force");
    at::Tensor x = at::empty({n, seqlen, dim}, at::kFloat);
    in.read(reinterpret_cast<char*>(x.data_ptr<float>()), static_cast<std::streamsize>(x.numel() * 4));
    if (!in || in.peek() != std::char_traits<char>::eof())
        throw Error(path + ": not the size of the residual stream (truncated or corrupt); start over with --force");
    return x;
}

/// The quantized Linears of decoder layer `l` by the plan, in kAllLinearKinds order.
std::vector<std::string> quantized_names(const QuantPlan& plan, int l)
{
    std::vector<std::string> names;
    for (LinearKind k : kAllLinearKinds)
        if (!plan.settings_for(linear_name(l, k)).skip)
            names.push_back(linear_name(l, k));
    return names;
}

double seconds_since(std::chrono::steady_clock::time_point t)
{
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

std::string minutes_text(double seconds)
{
    char buf[32];
    if (seconds < 90)
        std::snprintf(buf, sizeof buf, "%.0f s", seconds);
    else if (seconds < 5400)
        std::snprintf(buf, sizeof buf, "%.1f min", seconds / 60);
    else
        std::snprintf(buf, sizeof buf, "%.1f h", seconds / 3600);
    return buf;
}

} // namespace

std::string partial_folder(const std::string& output) { return output + ".partial"; }

std::string model_fingerprint(const Model& model)
{
    const QFileInfo info(QString::fromStdString(model.source_path));
    QStringList files;
    if (info.isDir()) {
        const QDir dir(info.filePath());
        files << "config.json";
        files << dir.entryList({"*.safetensors"}, QDir::Files, QDir::Name);
        for (QString& f : files)
            f = dir.filePath(f);
    } else {
        files << info.filePath();
    }
    std::string all;
    for (const QString& f : files)
        if (QFileInfo::exists(f))
            all += QFileInfo(f).fileName().toStdString() + ":" + sampled_sha256_of_file(f.toStdString()) + "\n";
    return sha256_of_bytes(all);
}

std::string windows_sha256(const std::vector<std::vector<int>>& windows)
{
    std::string bytes;
    for (const auto& w : windows) {
        bytes.append(reinterpret_cast<const char*>(w.data()), w.size() * sizeof(int));
        bytes.push_back('\n');
    }
    return sha256_of_bytes(bytes);
}

QuantizeToFileResult quantize_to_file(const Model& model, const std::vector<std::vector<int>>& windows,
                                      const QuantPlan& plan, const QuantizeToFileOptions& options,
                                      const ProgressFn& progress)
{
    const auto start = std::chrono::steady_clock::now();
    const LayerwiseQuantizer quantizer(model, windows, plan);
    const ModelConfig& c = model.config;
    const std::string& out = options.output;
    const std::string dir = partial_folder(out);
    const QString qdir = QString::fromStdString(dir);
    if (QFileInfo::exists(QString::fromStdString(out)) && !options.overwrite)
        throw Error(out + ": exists; refusing to overwrite (use --force)");

    QuantizeToFileResult result;
    result.working_bytes = quantizer.working_bytes();
    require_memory(result.working_bytes,
                   "quantizing " + model.source_path + " layer by layer (" + std::to_string(windows.size()) + " x " +
                       std::to_string(quantizer.seqlen()) + " calibration tokens twice in float32, one decoder layer "
                       "in float32 with its Hessians; fewer or shorter windows need less)");

    RunState now;
    now.program_version = PBLLM_VERSION;
    now.model = options.model_fingerprint;
    now.plan = plan.to_json();
    now.calibration = windows_sha256(windows);
    now.created = packed_creation_time();
    now.threads = at::get_num_threads();
    RunState state = now;
    FolderLock lock;
    at::Tensor x; // the residual stream entering the next layer to quantize
    if (options.resume) {
        if (!QFileInfo(qdir).isDir())
            throw Error(dir + ": no interrupted run of " + out + " to resume");
        lock.take(dir);
        state = read_state(dir);
        check_same_run(dir, state, now);
        if (state.layers_done > c.n_layers || (state.head_done && !plan.config.quantize_head))
            throw Error(dir + "/state.json: " + std::to_string(state.layers_done) + " layers done of " +
                        std::to_string(c.n_layers) + " (corrupt?); start over with --force");
        // Everything the run will rely on, checked before hours are spent on the layers left.
        for (int l = 0; l < state.layers_done; ++l)
            verify_layer_file(layer_file(dir, l), state.layer_sha256[static_cast<std::size_t>(l)]);
        if (state.head_done)
            verify_layer_file(head_file(dir), state.layer_sha256.back());
        else if (state.layers_done > 0 && (state.layers_done < c.n_layers || plan.config.quantize_head))
            x = read_stream(stream_file(dir, state.layers_done), state.layers_done, quantizer.windows(),
                            quantizer.seqlen(), c.dim);
    } else {
        x = quantizer.embed(); // checks the token ids before anything is written
        if (QFileInfo::exists(qdir)) {
            if (!options.overwrite)
                throw Error(dir + ": an interrupted run of this output is here; continue it with --resume, or start "
                                  "over with --force");
            lock.take(dir);
            remove_folder(dir);
        }
        if (!QDir().mkpath(qdir))
            throw Error(dir + ": cannot create the folder for the layers as they are made");
        lock.take(dir);
        write_state(dir, state);
    }
    if (!x.defined() && state.layers_done == 0)
        x = quantizer.embed();

    const bool head = plan.config.quantize_head;
    const int steps = c.n_layers + (head ? 1 : 0);
    const double layer_gflop = quantizer.layer_flops() / 1e9;
    result.resumed_layers = state.layers_done;
    for (int l = 0; l < state.layers_done; ++l) {
        LayerReport r;
        r.layer = l;
        r.gflop = layer_gflop;
        r.resumed = true;
        result.layers.push_back(r);
        if (options.layer_done)
            options.layer_done(r);
    }

    // The layers still to do, each written as soon as it is finished.
    AnonymousPeakSampler memory;
    if (state.layers_done < c.n_layers || (head && !state.head_done)) {
        double this_run_seconds = 0.0;
        int this_run_layers = 0;
        for (int l = state.layers_done; l < c.n_layers; ++l) {
            const auto layer_start = std::chrono::steady_clock::now();
            int stage_index = 0;
            LayerReport r;
            auto stage_start = layer_start;
            double* stage_seconds = nullptr;
            const std::string eta =
                this_run_layers == 0
                    ? std::string()
                    : ", " + minutes_text(this_run_seconds / this_run_layers) + "/layer, ETA " +
                          minutes_text(this_run_seconds / this_run_layers * (steps - l));
            std::vector<PackedWithReport> linears;
            auto keep_packed = [&](QuantizedLinear&& q) { linears.push_back(packed_with_report(q)); };
            quantizer.quantize_layer(l, x, keep_packed, [&](std::string_view stage) {
                const auto t = std::chrono::steady_clock::now();
                if (stage_seconds)
                    *stage_seconds += std::chrono::duration<double>(t - stage_start).count();
                stage_start = t;
                stage_seconds = stage == "hessians" ? &r.hessian_seconds
                                : stage == "output" ? &r.output_seconds
                                                    : &r.quantize_seconds;
                const std::int64_t now = current_anonymous_bytes();
                report_progress(progress, (l + stage_index++ / 9.0) / (steps + 0.5),
                                "layer " + std::to_string(l + 1) + "/" + std::to_string(c.n_layers) + ", " +
                                    std::string(stage) + eta + (now > 0 ? ", " + human_bytes(now) : std::string()));
            });
            *stage_seconds += seconds_since(stage_start);
            state.layer_sha256.push_back(write_linears_file(layer_file(dir, l), linears));
            const bool need_stream = l + 1 < c.n_layers || head;
            if (need_stream)
                write_stream(stream_file(dir, l + 1), l + 1, x);
            state.layers_done = l + 1;
            write_state(dir, state);
            std::remove(stream_file(dir, l).c_str());
            r.layer = l;
            r.seconds = seconds_since(layer_start);
            r.gflop = layer_gflop;
            r.resident_bytes = current_resident_bytes();
            r.peak_anonymous_bytes = memory.take_period_peak();
            this_run_seconds += r.seconds;
            ++this_run_layers;
            result.layers.push_back(r);
            if (options.layer_done)
                options.layer_done(r);
        }
        if (head && !state.head_done) {
            const auto head_start = std::chrono::steady_clock::now();
            report_progress(progress, c.n_layers / (steps + 0.5), "lm_head");
            state.layer_sha256.push_back(write_linears_file(head_file(dir), {packed_with_report(quantizer.quantize_head(x))}));
            state.head_done = true;
            write_state(dir, state);
            std::remove(stream_file(dir, c.n_layers).c_str());
            LayerReport r;
            r.layer = c.n_layers;
            r.seconds = seconds_since(head_start);
            r.resident_bytes = current_resident_bytes();
            r.peak_anonymous_bytes = memory.take_period_peak();
            result.layers.push_back(r);
            if (options.layer_done)
                options.layer_done(r);
        }
    }

    // The packed checkpoint, assembled from the layer files in the order write_packed_checkpoint
    // uses: full-precision tensors, then the quantized Linears.
    report_progress(progress, (steps + 0.25) / (steps + 0.5), "writing " + out);
    PackedHeader header = options.header;
    header.config = c;
    header.plan = plan;
    header.created = state.created;
    std::set<std::string> quantized;
    for (int l = 0; l < c.n_layers; ++l)
        for (const std::string& name : quantized_names(plan, l))
            quantized.insert(name + ".weight");
    if (head)
        quantized.insert("lm_head.weight");
    x = at::Tensor();
    PackedCheckpointWriter writer(out, header, dir);
    for (const NamedTensor& t : model.named_tensors())
        if (!quantized.count(t.name))
            writer.add_tensor(t.name, t.tensor);
    std::vector<LinearBits> bits;
    double salient = 0.0, binarized = 0.0;
    auto add = [&](PackedLinear&& p, LinearReport&& r) {
        writer.add_linear(p);
        if (!method_info(p.method).plain_grid) {
            salient += r.salient_ratio * static_cast<double>(p.weights());
            binarized += static_cast<double>(p.weights());
        }
        result.quantized_weights += p.weights();
        bits.push_back(r.bits);
        result.linears.push_back(std::move(r));
    };
    for (int l = 0; l < c.n_layers; ++l) {
        verify_layer_file(layer_file(dir, l), state.layer_sha256[static_cast<std::size_t>(l)]);
        read_linears_file(layer_file(dir, l), quantized_names(plan, l), add);
    }
    if (head) {
        verify_layer_file(head_file(dir), state.layer_sha256.back());
        read_linears_file(head_file(dir), {"lm_head"}, add);
    }
    writer.commit();
    remove_folder(dir);

    result.bits = bits_per_weight(bits);
    result.salient_ratio = binarized > 0 ? salient / binarized : 0.0;
    result.file_bytes = QFileInfo(QString::fromStdString(out)).size();
    result.seconds = seconds_since(start);
    result.peak_resident_bytes = peak_resident_bytes();
    memory.take_period_peak();
    result.peak_anonymous_bytes = memory.peak();
    report_progress(progress, 1.0, "quantized");
    return result;
}

} // namespace pbllm
