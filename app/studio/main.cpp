// pbllm-studio: the desktop studio. Thin wiring: parse the command line, open the model, show
// the window; or, with --screenshot, drive the pipeline up to the named page, save it as PNG
// and exit (the README's screenshots are made this way).
#include "app/studio/studio_bench.h"
#include "widgets/main_window.h"
#include "widgets/pages.h"
#include "widgets/studio_context.h"

#include "core/system.h"

#include <QApplication>
#include <QCommandLineParser>
#include <QDir>
#include <QElapsedTimer>
#include <QFileInfo>
#include <QIcon>
#include <QTemporaryDir>
#include <QTimer>

#include <cstdio>

using namespace pbllm;

namespace {

/// Runs the steps a page needs to show real content, then saves the page.
class ScreenshotDriver : public QObject {
public:
    ScreenshotDriver(MainWindow& window, QString page, QString file)
        : window_(window), page_(std::move(page)), file_(std::move(file))
    {
        const bool calibrate = page_ == "distributions" || page_ == "tuning";
        const bool quantize = page_ == "run" || page_ == "export" || page_ == "compare";
        StudioContext& ctx = window_.context();
        connect(&window_.loadJob(), &LoadModelJob::loaded, this, [this, calibrate, quantize] {
            if (calibrate)
                window_.distributionsPage()->calibrate();
            else if (quantize)
                window_.runPage()->start();
            else
                settle();
        });
        connect(&ctx, &StudioContext::calibrationChanged, this, [this, &ctx] {
            if (ctx.calibration())
                settle();
        });
        connect(&ctx, &StudioContext::runChanged, this, [this, &ctx] {
            if (!ctx.run())
                return;
            if (page_ == "export")
                window_.exportPage()->exportTo(QDir(scratch_.path()).filePath("model.pbllm.h5"), true);
            else if (page_ == "compare")
                window_.comparePage()->start();
            else
                settle();
        });
        connect(&window_.exportPage()->job(), &Job::finished, this, &ScreenshotDriver::settle);
        connect(window_.comparePage(), &ComparePage::comparisonDone, this, &ScreenshotDriver::settle);
        for (Job* job : {static_cast<Job*>(&window_.loadJob()), static_cast<Job*>(&window_.distributionsPage()->calibrateJob()),
                         static_cast<Job*>(&window_.runPage()->job())})
            connect(job, &Job::failed, this, [](const QString& m) {
                std::fprintf(stderr, "pbllm-studio: %s\n", qPrintable(m));
                QCoreApplication::exit(1);
            });
    }

private:
    void settle()
    {
        // Let previews and queued replots land before grabbing.
        QTimer::singleShot(1500, this, [this] {
            window_.showPage(page_);
            QTimer::singleShot(300, this, [this] {
                const bool ok = window_.grab().save(file_);
                if (!ok)
                    std::fprintf(stderr, "pbllm-studio: cannot write %s\n", qPrintable(file_));
                QCoreApplication::exit(ok ? 0 : 1);
            });
        });
    }

    MainWindow& window_;
    QString page_, file_;
    QTemporaryDir scratch_;
};

} // namespace

int main(int argc, char** argv)
{
    QElapsedTimer since_start;
    since_start.start();
    // Screenshots need no display: pick the offscreen platform before QApplication exists.
    for (int i = 1; i < argc; ++i)
        if ((QByteArray(argv[i]) == "--screenshot" || QByteArray(argv[i]) == "--bench") && !qEnvironmentVariableIsSet("QT_QPA_PLATFORM"))
            qputenv("QT_QPA_PLATFORM", "offscreen");
    QApplication app(argc, argv);
    QApplication::setOrganizationName("pbllm");
    QApplication::setApplicationName("PB-LLM Studio");
    QApplication::setApplicationVersion(PBLLM_VERSION);
    QGuiApplication::setDesktopFileName("io.github.pbllm.Studio");
    QApplication::setWindowIcon(QIcon::fromTheme("io.github.pbllm.Studio")); // installed by the package
    QCommandLineParser parser;
    parser.setApplicationDescription("PB-LLM Studio: analyse and compress Llama-family models to 1-2 bits.");
    parser.addHelpOption();
    parser.addVersionOption();
    parser.addOption({"screenshot", "Render a page with the model loaded to FILE.png and exit.", "FILE"});
    parser.addOption({"page", "Page for --screenshot: model, distributions, tuning, run, export, compare.", "PAGE", "model"});
    parser.addOption({"bench", "Measure opening, slider latency and memory on SHAPE (stories260K, synthetic-110M or a model folder), print JSON, exit.", "SHAPE"});
    parser.addPositionalArgument("MODEL", "Model file or folder (default: stories260K).", "[MODEL]");
    parser.process(app);
    configure_runtime(StudioSettings::load().threads);

    MainWindow window;
    if (parser.isSet("bench")) {
        window.resize(1400, 900);
        return run_studio_bench(window, parser.value("bench"), since_start);
    }
    std::unique_ptr<ScreenshotDriver> driver;
    if (parser.isSet("screenshot")) {
        const QString page = parser.value("page");
        if (!window.showPage(page)) {
            std::fprintf(stderr, "pbllm-studio: --page %s is not a page (model, distributions, tuning, run, export, compare)\n",
                         qPrintable(page));
            return 2;
        }
        driver = std::make_unique<ScreenshotDriver>(window, page, parser.value("screenshot"));
        window.resize(1400, 900);
    }
    const QStringList args = parser.positionalArguments();
    window.openModel(args.isEmpty() ? QString() : QFileInfo(args.first()).absoluteFilePath());
    if (!driver)
        window.show();
    return app.exec();
}
