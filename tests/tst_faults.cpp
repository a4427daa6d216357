// Faults from outside: an unwritable export folder, a model too large for memory (refused from
// its header, before any allocation), and a QAT run killed with SIGKILL that resumes from its
// last checkpoint to the same result as an uninterrupted run; in the asan build, a read of a freed
// tensor is still reported although freed tensor blocks are kept for reuse there.
#include "tests/support/test_support.h"

#include "core/error.h"
#include "core/llama2c.h"
#include "core/packed_checkpoint.h"
#include "core/ptq.h"
#include "core/qat.h"
#include "core/quant_config.h"

#include <ATen/ATen.h>
#include <QDir>
#include <QFile>
#include <QProcess>
#include <QTemporaryDir>
#include <QtTest>

#include <csignal>
#include <cstring>
#include <sys/wait.h>
#include <unistd.h>

using namespace pbllm;
using namespace pbllm::test;

namespace {

QuantizedModel small_quantized_model()
{
    QatSettings s;
    s.steps = 1;
    s.batch = 1;
    s.accum = 1;
    s.seqlen = 32;
    return train_qat(stories260k(), tinystories_train_tokens(), s, std::nullopt).quantized;
}

QStringList qat_args(const QString& out, const QString& checkpoint)
{
    return {"qat", QString::fromStdString(stories260k_path()), "--train", QString::fromStdString(tinystories_train_path()),
            "-o", out, "--steps", "60", "--batch", "1", "--accum", "1", "--seqlen", "64", "--lr", "1e-3",
            "--checkpoint", checkpoint, "--checkpoint-every", "5", "--force"};
}

int run_pbllm(const QStringList& args)
{
    QProcess p;
    p.start(QString::fromStdString(pbllm_executable()), args);
    if (!p.waitForFinished(300000))
        return -1;
    return p.exitStatus() == QProcess::NormalExit ? p.exitCode() : -1;
}

} // namespace

class TestFaults : public QObject {
    Q_OBJECT

private Q_SLOTS:
    void exportIntoUnwritableFolderFailsCleanly()
    {
        const QuantizedModel q = small_quantized_model();
        QTemporaryDir dir;
        // root ignores directory permissions, so as root use a folder no one may create files in.
        const bool root = ::geteuid() == 0;
        const QString folder = root ? QStringLiteral("/proc/self") : dir.filePath("locked");
        if (!root) {
            QVERIFY(QDir().mkpath(folder));
            write_packed_checkpoint(q, (folder + "/model.pbllm.h5").toStdString()); // the previous file
            QVERIFY(QFile::setPermissions(folder, QFile::ReadOwner | QFile::ExeOwner));
        }
        const QString target = folder + "/model.pbllm.h5";
        const std::string before = root ? std::string() : read_bytes(target);
        try {
            write_packed_checkpoint(q, target.toStdString());
            QFAIL("writing into an unwritable folder succeeded");
        } catch (const Error& e) {
            QVERIFY2(QString(e.what()).contains(target), e.what());
        }
        if (!root) {
            QVERIFY(read_bytes(target) == before);                    // intact
            QCOMPARE(QDir(folder).entryList(QDir::Files).size(), 1);  // no temporary left behind
            QFile::setPermissions(folder, QFile::ReadOwner | QFile::WriteOwner | QFile::ExeOwner);
        } else {
            QVERIFY(!QFile::exists(target));
        }
    }

    void useAfterFreeOfATensorIsReportedUnderAsan()
    {
#if !defined(__SANITIZE_ADDRESS__)
        QSKIP("meaningful only in the asan build");
#else
        // Sanitizer builds keep freed tensor blocks for reuse (core/system.cpp); a cached block
        // must stay poisoned, or a read through a stale data pointer would go unnoticed.
        int out[2];
        QVERIFY(::pipe(out) == 0);
        const pid_t child = ::fork();
        QVERIFY(child >= 0);
        if (child == 0) {
            ::dup2(out[1], STDERR_FILENO);
            ::close(out[0]);
            ::close(out[1]);
            at::Tensor block = at::empty({1 << 18}); // 1 MiB: large enough to be cached
            volatile float* stale = block.data_ptr<float>();
            stale[7] = 1.0f;
            block.reset();
            const float read = stale[7];
            ::_exit(read == 1.0f ? 0 : 3); // reached only if the read was not reported
        }
        ::close(out[1]);
        QByteArray report;
        char buffer[4096];
        for (ssize_t n; (n = ::read(out[0], buffer, sizeof buffer)) > 0;)
            report.append(buffer, n);
        ::close(out[0]);
        int status = 0;
        QCOMPARE(::waitpid(child, &status, 0), child);
        QVERIFY2(WIFEXITED(status) && WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != 3, report.constData());
        QVERIFY2(report.contains("use-after-poison") || report.contains("heap-use-after-free"), report.constData());
#endif
    }

    void modelLargerThanMemoryIsRefusedFromItsHeader()
    {
        // A 70B-sized llama2.c header over a sparse file: loading must fail with a message about
        // memory, not allocate (or be killed by the OOM killer).
        QTemporaryDir dir;
        const QString path = dir.filePath("huge.bin");
        ModelConfig c;
        c.dim = 8192;
        c.hidden_dim = 28672;
        c.n_layers = 80;
        c.n_heads = 64;
        c.n_kv_heads = 8;
        c.vocab_size = 32000;
        c.max_seq_len = 4096;
        const std::int32_t header[7] = {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len};
        {
            QFile f(path);
            QVERIFY(f.open(QIODevice::WriteOnly));
            f.write(reinterpret_cast<const char*>(header), sizeof(header));
            QVERIFY(f.resize(llama2c_v0_file_size(c, true))); // sparse: no disk used
        }
        try {
            load_llama2c(path.toStdString());
            QFAIL("a 70B model loaded on this machine");
        } catch (const Error& e) {
            const QString m = e.what();
            QVERIFY2(m.contains("huge.bin") && m.contains("of memory but only"), e.what());
        }
    }

    void qatKilledWithSigkillResumesFromItsCheckpoint()
    {
        QTemporaryDir dir;
        const QString whole = dir.filePath("whole.pbllm.h5"), resumed = dir.filePath("resumed.pbllm.h5");
        const QString ckpt = dir.filePath("run.ckpt");
        QCOMPARE(run_pbllm(qat_args(whole, dir.filePath("whole.ckpt"))), 0);

        QProcess victim;
        victim.start(QString::fromStdString(pbllm_executable()), qat_args(resumed, ckpt));
        QVERIFY(victim.waitForStarted());
        // Kill it as soon as a checkpoint exists (it keeps training past it).
        QTRY_VERIFY_WITH_TIMEOUT(QFileInfo(ckpt).size() > 0, kPatientMs);
        QTest::qWait(100);
        ::kill(static_cast<pid_t>(victim.processId()), SIGKILL);
        QVERIFY(victim.waitForFinished(10000));
        QCOMPARE(victim.exitStatus(), QProcess::CrashExit);
        QVERIFY2(!QFile::exists(resumed), "a killed run left an output file");

        QStringList args = qat_args(resumed, ckpt);
        args << "--resume" << ckpt;
        QCOMPARE(run_pbllm(args), 0);
        // Same data order, same optimizer state: the resumed run ends where the whole one did.
        const PackedCheckpoint a = read_packed_checkpoint(whole.toStdString());
        const PackedCheckpoint b = read_packed_checkpoint(resumed.toStdString());
        QCOMPARE(a.packed.size(), b.packed.size());
        for (std::size_t i = 0; i < a.packed.size(); ++i) {
            QVERIFY2(a.packed[i].signs == b.packed[i].signs, a.packed[i].name.c_str());
            QVERIFY2(a.packed[i].alpha == b.packed[i].alpha, a.packed[i].name.c_str());
        }
    }
};

QTEST_GUILESS_MAIN(TestFaults)
#include "tst_faults.moc"
