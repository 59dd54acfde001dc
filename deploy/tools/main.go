// deploy-check validates Strata's deployment files with the libraries their tools are built on:
//
//	deploy-check compose <docker-compose.yml>   loads it with compose-go (the Compose
//	                                            Specification's reference loader, which checks the
//	                                            file against the spec's JSON schema and the
//	                                            services' references) and prints the resolved
//	                                            project as JSON
//	deploy-check servicemonitor <manifests.yaml> decodes every ServiceMonitor strictly into
//	                                            prometheus-operator's own Go types (an unknown or
//	                                            mistyped field fails) and counts them
//	deploy-check json <manifests.yaml>          prints the documents of a multi-document YAML
//	                                            file as one JSON array (for the tests)
//	deploy-check crd <crd.yaml> <manifests.yaml> validates every custom resource of the
//	                                            definition's kind (a KEDA ScaledObject) against
//	                                            its openAPIV3Schema, closed to unknown fields
//
// Exit status 0: valid; 1: invalid; 2: bad usage.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/compose-spec/compose-go/v2/cli"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) != 3 && !(len(os.Args) == 4 && os.Args[1] == "crd") {
		fmt.Fprintln(os.Stderr, "usage: deploy-check compose <file> | servicemonitor <file> | json <file> | crd <crd> <file>")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "compose":
		err = checkCompose(os.Args[2])
	case "servicemonitor":
		err = checkServiceMonitors(os.Args[2])
	case "json":
		err = printJSON(os.Args[2])
	case "crd":
		err = checkCustomResources(os.Args[2], os.Args[3])
	default:
		fmt.Fprintf(os.Stderr, "unknown check %q\n", os.Args[1])
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "deploy-check %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// checkCompose loads the file as `docker compose config` does, without the caller's environment
// so that the defaults written in the file are what is checked.
func checkCompose(file string) error {
	abs, err := filepath.Abs(file)
	if err != nil {
		return err
	}
	opts, err := cli.NewProjectOptions([]string{abs}, cli.WithWorkingDirectory(filepath.Dir(abs)), cli.WithInterpolation(true), cli.WithResolvedPaths(true))
	if err != nil {
		return err
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		return err
	}
	out, err := project.MarshalJSON()
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(append(out, '\n'))
	return err
}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

// checkServiceMonitors decodes each ServiceMonitor document of a multi-document YAML file.
func checkServiceMonitors(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	n := 0
	for i, doc := range docSeparator.Split(string(data), -1) {
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			return fmt.Errorf("document %d: %w", i, err)
		}
		if head.Kind != "ServiceMonitor" {
			continue
		}
		if head.APIVersion != "monitoring.coreos.com/v1" {
			return fmt.Errorf("document %d: ServiceMonitor of apiVersion %q, want monitoring.coreos.com/v1", i, head.APIVersion)
		}
		var sm monitoringv1.ServiceMonitor
		if err := yaml.UnmarshalStrict([]byte(doc), &sm); err != nil {
			return fmt.Errorf("ServiceMonitor in document %d: %w", i, err)
		}
		if sm.Name == "" || len(sm.Spec.Endpoints) == 0 {
			return fmt.Errorf("ServiceMonitor in document %d needs a name and at least one endpoint", i)
		}
		for _, ep := range sm.Spec.Endpoints {
			if ep.Port == "" && ep.TargetPort == nil {
				return fmt.Errorf("ServiceMonitor %s: an endpoint names no port", sm.Name)
			}
		}
		n++
	}
	fmt.Printf("%d ServiceMonitor(s) valid\n", n)
	return nil
}

// printJSON converts every non-empty document of a multi-document YAML file to JSON.
func printJSON(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	docs := []json.RawMessage{}
	for i, doc := range docSeparator.Split(string(data), -1) {
		j, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			return fmt.Errorf("document %d: %w", i, err)
		}
		if string(j) != "null" {
			docs = append(docs, j)
		}
	}
	out, err := json.Marshal(docs)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(append(out, '\n'))
	return err
}
