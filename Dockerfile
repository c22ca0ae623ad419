# Build: docker build -t hostpath-csi/hostpath-plugin:latest .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -ldflags "-X github.com/hostpath-csi/hostpath-csi/pkg/driver.version=${VERSION}" -o /hostpath-plugin ./cmd/hostpath-plugin

FROM gcr.io/distroless/static-debian12
COPY --from=build /hostpath-plugin /hostpath-plugin
ENTRYPOINT ["/hostpath-plugin"]
