#include "core/safetensors.h"

#include "core/error.h"
#include "core/system.h"

#include <ATen/ATen.h>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace pbllm {
namespace {

/// A non-negative integer count from JSON (a double there) no larger than `max`; false for
/// anything else (fractions, negatives, NaN, huge values that would not fit an int64).
bool json_count(const QJsonValue& value, double max, std::int64_t& out)
{
    if (!value.isDouble())
        return false;
    const double v = value.toDouble();
    if (!(v >= 0.0 && v <= max) || std::floor(v) != v)
        return false;
    out = static_cast<std::int64_t>(v);
    return true;
}

int element_size(const std::string& dtype)
{
    if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
    if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
    if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
    if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2") return 1;
    return 0;
}

} // namespace

at::ScalarType scalar_type_from_safetensors(const std::string& dtype, const std::string& context)
{
    if (dtype == "F32") return at::kFloat;
    if (dtype == "F16") return at::kHalf;
    if (dtype == "BF16") return at::kBFloat16;
    if (dtype == "F64") return at::kDouble;
    if (dtype == "I64") return at::kLong;
    if (dtype == "I32") return at::kInt;
    if (dtype == "I8") return at::kChar;
    if (dtype == "U8") return at::kByte;
    throw Error(context + ": tensor dtype " + dtype + " is not supported");
}

std::string safetensors_dtype(at::ScalarType type)
{
    switch (type) {
    case at::kFloat: return "F32";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kDouble: return "F64";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kChar: return "I8";
    case at::kByte: return "U8";
    default: throw Error(std::string("cannot store dtype ") + c10::toString(type) + " in safetensors");
    }
}

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(std::make_shared<MappedFile>(path))
{
    const std::int64_t size = static_cast<std::int64_t>(file_->size());
    auto fail = [&](const std::string& why) { throw Error(path + ": not a valid safetensors file: " + why); };
    if (size < 8)
        fail("shorter than the 8-byte header length");
    std::uint64_t header_len;
    std::memcpy(&header_len, file_->data(), 8);
    if (header_len > static_cast<std::uint64_t>(size - 8) || header_len > (100u << 20))
        fail("header length " + std::to_string(header_len) + " exceeds the file size " + std::to_string(size));
    data_start_ = 8 + static_cast<std::int64_t>(header_len);
    const std::int64_t data_size = size - data_start_;

    QJsonParseError perr{};
    const QJsonDocument doc = QJsonDocument::fromJson(
        QByteArray::fromRawData(reinterpret_cast<const char*>(file_->data() + 8), static_cast<qsizetype>(header_len)),
        &perr);
    if (perr.error != QJsonParseError::NoError || !doc.isObject())
        fail("header is not a JSON object (" + perr.errorString().toStdString() + ")");

    std::vector<std::pair<std::int64_t, std::int64_t>> ranges;
    const QJsonObject root = doc.object();
    for (auto it = root.begin(); it != root.end(); ++it) {
        const std::string name = it.key().toStdString();
        if (name == "__metadata__") {
            const QJsonObject meta = it.value().toObject();
            for (auto m = meta.begin(); m != meta.end(); ++m)
                metadata_[m.key().toStdString()] = m.value().toString().toStdString();
            continue;
        }
        const QJsonObject e = it.value().toObject();
        const QJsonArray shape = e.value("shape").toArray();
        const QJsonArray offsets = e.value("data_offsets").toArray();
        SafetensorsEntry entry;
        entry.dtype = e.value("dtype").toString().toStdString();
        const int esize = element_size(entry.dtype);
        if (esize == 0)
            fail("tensor '" + name + "' has unknown dtype '" + entry.dtype + "'");
        std::int64_t numel = 1;
        for (const QJsonValue& s : shape) {
            std::int64_t dim = 0;
            if (!json_count(s, 1e12, dim))
                fail("tensor '" + name + "' has an invalid shape");
            entry.shape.push_back(dim);
            numel *= entry.shape.back();
            if (numel > (std::int64_t(1) << 40))
                fail("tensor '" + name + "' is implausibly large");
        }
        // Offsets beyond 2^62 cannot be in any file; the bounds check below names the real limit.
        if (offsets.size() != 2 || !json_count(offsets[0], 4.6e18, entry.begin) || !json_count(offsets[1], 4.6e18, entry.end))
            fail("tensor '" + name + "' has no valid [begin, end] data_offsets");
        if (entry.begin < 0 || entry.end < entry.begin || entry.end > data_size)
            fail("tensor '" + name + "' data_offsets [" + std::to_string(entry.begin) + ", " +
                 std::to_string(entry.end) + "] lie outside the " + std::to_string(data_size) + "-byte data section" +
                 (entry.end > data_size ? " (file truncated?)" : ""));
        if (entry.end - entry.begin != numel * esize)
            fail("tensor '" + name + "' spans " + std::to_string(entry.end - entry.begin) + " bytes but its shape and " +
                 entry.dtype + " need " + std::to_string(numel * esize));
        ranges.emplace_back(entry.begin, entry.end);
        entries_.emplace(name, std::move(entry));
    }
    std::sort(ranges.begin(), ranges.end());
    for (std::size_t i = 1; i < ranges.size(); ++i)
        if (ranges[i].first < ranges[i - 1].second)
            fail("tensor data ranges overlap");
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const
{
    const auto it = entries_.find(name);
    if (it == entries_.end())
        throw Error(path() + ": tensor '" + name + "' is missing");
    return it->second;
}

at::Tensor SafetensorsFile::read(const std::string& name) const
{
    const SafetensorsEntry& e = entry(name);
    at::Tensor t = at::empty(e.shape, scalar_type_from_safetensors(e.dtype, path() + ": tensor '" + name + "'"));
    std::memcpy(t.data_ptr(), file_->data() + data_start_ + e.begin, static_cast<std::size_t>(e.end - e.begin));
    return t;
}

at::Tensor SafetensorsFile::view(const std::string& name) const
{
    const SafetensorsEntry& e = entry(name);
    const at::ScalarType type = scalar_type_from_safetensors(e.dtype, path() + ": tensor '" + name + "'");
    std::uint8_t* data = const_cast<std::uint8_t*>(file_->data()) + data_start_ + e.begin;
    // Offsets need not be aligned for the element type; vector code may assume they are.
    if (reinterpret_cast<std::uintptr_t>(data) % c10::elementSize(type) != 0 || e.end == e.begin)
        return read(name);
    std::shared_ptr<MappedFile> keep_alive = file_;
    return at::from_blob(
        data, e.shape, [keep_alive](void*) {}, at::TensorOptions().dtype(type));
}

std::string safetensors_header(const std::vector<TensorSpec>& tensors, const std::map<std::string, std::string>& metadata)
{
    QJsonObject header;
    QJsonObject meta;
    for (const auto& [k, v] : metadata)
        meta.insert(QString::fromStdString(k), QString::fromStdString(v));
    if (!meta.isEmpty())
        header.insert("__metadata__", meta);
    std::int64_t offset = 0;
    for (const TensorSpec& t : tensors) {
        std::int64_t bytes = static_cast<std::int64_t>(c10::elementSize(t.dtype));
        QJsonArray shape;
        for (std::int64_t s : t.shape) {
            shape.append(static_cast<double>(s));
            bytes *= s;
        }
        QJsonObject e;
        e.insert("dtype", QString::fromStdString(safetensors_dtype(t.dtype)));
        e.insert("shape", shape);
        e.insert("data_offsets", QJsonArray{static_cast<double>(offset), static_cast<double>(offset + bytes)});
        header.insert(QString::fromStdString(t.name), e);
        offset += bytes;
    }
    QByteArray json = QJsonDocument(header).toJson(QJsonDocument::Compact);
    while (json.size() % 8 != 0)
        json.append(' '); // the format allows trailing spaces; keeps the data 8-byte aligned
    const std::uint64_t header_len = static_cast<std::uint64_t>(json.size());
    std::string out(8, '\0');
    std::memcpy(out.data(), &header_len, 8);
    return out + json.toStdString();
}

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::map<std::string, std::string>& metadata)
{
    std::vector<TensorSpec> specs;
    std::vector<at::Tensor> contiguous;
    for (const NamedTensor& nt : tensors) {
        at::Tensor t = nt.tensor.to(at::kCPU).contiguous();
        specs.push_back({nt.name, t.scalar_type(), t.sizes().vec()});
        contiguous.push_back(std::move(t));
    }
    const std::string header = safetensors_header(specs, metadata);
    AtomicFileWriter out(path);
    out.write(header.data(), header.size());
    for (const at::Tensor& t : contiguous)
        out.write(t.data_ptr(), static_cast<std::size_t>(t.numel()) * t.element_size());
    out.commit();
}

} // namespace pbllm
