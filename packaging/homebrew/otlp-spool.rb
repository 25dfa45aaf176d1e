# Homebrew formula for otlp-spool: builds from the release's source tarball with cargo.
# `scripts/release.sh VERSION` renders it into dist/otlp-spool.rb with `url` and `sha256` set to
# that release's source tarball (dist/otlp-spool-VERSION.tar.gz, published as a release asset);
# the rendered file is what goes into a tap (packaging/README.md). Here the two are placeholders,
# and `brew install --HEAD otlp-spool` builds from the repository.
# Validated in CI by tests/packaging.sh: `ruby -c` on the rendered formula, its sha256 against the
# tarball, and the `service` and `test` blocks run against the freshly built binary.
class OtlpSpool < Formula
  desc "Store-and-forward OpenTelemetry agent with a durable local spool"
  homepage "https://github.com/otlp-spool/otlp-spool"
  # Filled in by scripts/release.sh from the source tarball (placeholders in the repository).
  url "https://github.com/otlp-spool/otlp-spool/releases/download/v0.1.0/otlp-spool-0.1.0.tar.gz"
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  license "Apache-2.0"
  head "https://github.com/otlp-spool/otlp-spool.git", branch: "main"

  depends_on "rust" => :build

  def install
    system "cargo", "install", *std_cargo_args
    # Files installed into etc are never overwritten: on upgrade an edited config.toml is kept and
    # the new example is written beside it as config.toml.default.
    (etc/"otlp-spool").install "config.example.toml" => "config.toml"
    man1.install "packaging/deb/otlp-spool.1"
  end

  def caveats
    <<~EOS
      The config is #{etc}/otlp-spool/config.toml (edit it, then `otlp-spool check`).
      `brew services start otlp-spool` runs the agent as you, at login, on 127.0.0.1:4318;
      its log is #{var}/log/otlp-spool.log and its spool
      ~/Library/Application Support/otlp-spool.
      Point a tool at it with, e.g.: eval "$(otlp-spool env claude-code)"
    EOS
  end

  service do
    run [opt_bin/"otlp-spool", "run", "--config", etc/"otlp-spool/config.toml"]
    keep_alive true
    log_path var/"log/otlp-spool.log"
    error_log_path var/"log/otlp-spool.log"
  end

  test do
    port = free_port
    (testpath/"config.toml").write <<~TOML
      [server]
      listen = "127.0.0.1:#{port}"
      grpc_listen = ""

      [spool]
      dir = "#{testpath}/spool"
    TOML
    assert_match "spool directory: #{testpath}/spool",
                 shell_output("#{bin}/otlp-spool check --config #{testpath}/config.toml")

    (testpath/"span.json").write <<~JSON
      {"resourceSpans":[{
        "resource":{"attributes":[{"key":"service.name","value":{"stringValue":"brew-test"}}]},
        "scopeSpans":[{"spans":[{
          "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"brew-test",
          "kind":1,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000001000000000"
        }]}]
      }]}
    JSON

    pid = spawn "#{bin}/otlp-spool", "run", "--config", "#{testpath}/config.toml"
    begin
      50.times do
        break if quiet_system "curl", "--silent", "--fail", "http://127.0.0.1:#{port}/healthz"

        sleep 0.2
      end
      status = shell_output("curl --silent --output /dev/null --write-out '%{http_code}' " \
                            "--header 'Content-Type: application/json' --data @#{testpath}/span.json " \
                            "http://127.0.0.1:#{port}/v1/traces")
      assert_equal "200", status
      assert_match '"items": 1', shell_output("curl --silent http://127.0.0.1:#{port}/status")
    ensure
      Process.kill("TERM", pid)
      Process.wait(pid)
    end
  end
end
