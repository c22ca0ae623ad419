// Command svcproxy forwards TCP connections from one address to another. The
// end-to-end cluster has no kube-proxy: svcproxy listens on the kubernetes
// Service's IP (put on lo) and forwards to the API server on 127.0.0.1, so
// that in-cluster clients (the sidecars) reach the API.
package main

import (
	"flag"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	listen := flag.String("listen", "", "address to listen on (host:port)")
	target := flag.String("target", "", "address to forward to (host:port)")
	flag.Parse()
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen on %s: %v", *listen, err)
	}
	go func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
		<-c
		l.Close()
	}()
	for {
		in, err := l.Accept()
		if err != nil {
			return // closed on a signal
		}
		go func() {
			defer in.Close()
			out, err := net.Dial("tcp", *target)
			if err != nil {
				log.Printf("dial %s: %v", *target, err)
				return
			}
			defer out.Close()
			done := make(chan struct{}, 2)
			go func() { io.Copy(out, in); out.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
			go func() { io.Copy(in, out); in.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
			<-done
			<-done
		}()
	}
}
