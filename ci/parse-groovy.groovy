// Compiles each file given as an argument without running it: a syntax error in a
// Jenkinsfile fails here instead of on the Jenkins controller.
import org.codehaus.groovy.control.CompilerConfiguration

def shell = new GroovyShell(new CompilerConfiguration())
args.each { path ->
    shell.parse(new File(path))
    println "groovy: ${path} parses"
}
