# Cascade broker image, built FROM scratch: nothing is pulled from any registry.
#
# Do not build this file directly: run `deploy/build-image.sh`, which builds (or takes) the
# `cascade` binary and prepares a build context with `rootfs.tar` holding exactly the binary, the
# shared libraries `ldd` lists for it, the dynamic loader, and a few files glibc reads
# (/etc/passwd, /etc/group, /etc/nsswitch.conf). There is no shell in the image.
FROM scratch

# ADD of a local tar unpacks it keeping the owners recorded in it (COPY would make everything
# root's): that is how /data comes to belong to the image's user.
ADD rootfs.tar /

# A fixed non-root user (65532, as in the usual "nonroot" images). /data is owned by it in the
# image, so a fresh named volume mounted there starts out writable by the server.
USER 65532:65532

ENV CASCADE_DATA_DIR=/data \
    CASCADE_GRPC_ADDR=0.0.0.0:50051 \
    CASCADE_HTTP_ADDR=0.0.0.0:8082
VOLUME ["/data"]
EXPOSE 50051 8082

# Exec form: there is no shell. `cascade cluster status` exits non-zero unless the node's gRPC
# API answers; HTTP probes (/healthz, /readyz on 8082) are for Compose/Kubernetes to use.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/cascade", "cluster", "status", "--brokers", "127.0.0.1:50051"]

ENTRYPOINT ["/usr/local/bin/cascade"]
CMD ["server"]
